"""The CNI dispatcher as a plain function: environment checks, versions, errors, output conversion."""

import json
import logging

import pytest

from cni import log, skel
from cni.errors import CNIError
from cni.result import from_any, to_version

CALLS = []


def _add(request):
    CALLS.append(("ADD", request))
    if request.config.get("explode"):
        raise RuntimeError("boom")
    if request.config.get("refuse"):
        raise CNIError(7, "refused on purpose", "details here")
    return {"interfaces": [{"name": "eth0", "mac": "0a:58:00:00:00:01", "sandbox": request.netns, "mtu": 1500}],
            "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 0},
                    {"address": "fd01::2/64", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "table": 100}]}


def _record(name):
    return lambda request: CALLS.append((name, request))


PLUGIN = skel.Plugin("test", _add, _record("DEL"), _record("CHECK"), _record("STATUS"), _record("GC"))
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": __file__, "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin"}


def run(config=None, raw=None, **env):
    stdin = raw if raw is not None else json.dumps(config or {"cniVersion": "1.1.0", "name": "n"}).encode()
    out, code = skel.run(PLUGIN, {**ENV, **env}, stdin)
    return (json.loads(out) if out.strip() else None), code


@pytest.fixture(autouse=True)
def _clear():
    CALLS.clear()


def test_version_command_lists_supported_versions():
    out, code = run(raw=b"", CNI_COMMAND="VERSION")
    assert code == 0
    assert out == {"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    out, _ = run({"cniVersion": "0.4.0"}, CNI_COMMAND="VERSION")
    assert out["cniVersion"] == "0.4.0"


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_add_result_in_legacy_versions_has_ip_version_and_no_new_fields(version):
    out, code = run({"cniVersion": version, "name": "n"})
    assert code == 0 and out["cniVersion"] == version
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert "mtu" not in out["interfaces"][0] and out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]


def test_add_result_1_0_drops_1_1_fields_and_1_1_keeps_them():
    out, _ = run({"cniVersion": "1.0.0", "name": "n"})
    assert "version" not in out["ips"][0] and "mtu" not in out["interfaces"][0] and "table" not in out["routes"][0]
    out, _ = run({"cniVersion": "1.1.0", "name": "n"})
    assert out["interfaces"][0]["mtu"] == 1500 and out["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.1.0.1",
                                                                       "mtu": 1400, "table": 100}


def test_cni_versions_list_chooses_newest_supported():
    out, code = run({"cniVersions": ["0.4.0", "1.0.0", "9.0.0"], "name": "n"})
    assert code == 0 and out["cniVersion"] == "1.0.0"
    out, code = run({"cniVersions": ["9.0.0"], "name": "n"})
    assert code == 1 and out["code"] == 1


@pytest.mark.parametrize("command,minimum", [("CHECK", "0.4.0"), ("STATUS", "1.1.0"), ("GC", "1.1.0")])
def test_commands_gated_by_version(command, minimum):
    out, code = run({"cniVersion": "0.3.1", "name": "n"}, CNI_COMMAND=command)
    assert code == 1 and out["code"] == 1 and command in out["msg"] and out["cniVersion"] == "0.3.1"
    out, code = run({"cniVersion": "1.1.0", "name": "n"}, CNI_COMMAND=command)
    assert code == 0 and out is None and CALLS[-1][0] == command


def test_missing_variables_are_named():
    env = dict(ENV)
    out, code = skel.run(PLUGIN, {"CNI_COMMAND": "ADD"}, b'{"cniVersion": "1.0.0", "name": "n"}')
    out = json.loads(out)
    assert code == 1 and out["code"] == 4
    for name in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"):
        assert name in out["msg"]
    assert env == ENV


def test_del_does_not_need_netns_and_accepts_a_missing_one():
    out, code = run(CNI_COMMAND="DEL", CNI_NETNS="")
    assert code == 0 and CALLS[-1][1].netns == ""
    out, code = run(CNI_COMMAND="DEL", CNI_NETNS="/run/netns/surely-not-there")
    assert code == 0


def test_missing_netns_on_add_is_code_3():
    out, code = run(CNI_NETNS="/run/netns/surely-not-there")
    assert code == 1 and out["code"] == 3 and "surely-not-there" in out["msg"]
    assert not CALLS


def test_own_namespace_refused_before_the_plugin_runs():
    out, code = run(CNI_NETNS="/proc/self/ns/net")
    assert code == 1 and out["code"] == 4 and "own network namespace" in out["msg"]
    assert not CALLS


def test_plugin_error_and_crash_become_error_objects():
    out, code = run({"cniVersion": "0.4.0", "name": "n", "refuse": True})
    assert code == 1 and out == {"cniVersion": "0.4.0", "code": 7, "msg": "refused on purpose", "details": "details here"}
    out, code = run({"cniVersion": "1.0.0", "name": "n", "explode": True})
    assert code == 1 and out["code"] == 100 and "boom" in out["details"] and "Traceback" not in json.dumps(out)


def test_cni_args_are_parsed_and_validated():
    run(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.0.9")
    assert CALLS[-1][1].args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web", "IP": "10.1.0.9"}
    out, code = run(CNI_ARGS="novalue")
    assert code == 1 and out["code"] == 4 and "novalue" in out["msg"]


def test_prev_result_of_any_version_reads_into_current_shape():
    legacy = {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.0.2/24", "interface": 0}],
              "interfaces": [{"name": "eth0"}]}
    current = from_any(legacy, "0.3.1")
    assert current["ips"] == [{"address": "10.1.0.2/24", "interface": 0}]
    assert to_version(current, "0.3.1")["ips"][0]["version"] == "4"
    with pytest.raises(CNIError) as e:
        from_any({"ips": [{"address": "not-an-ip"}]}, "1.0.0")
    assert e.value.code == 6


def test_an_unknown_log_level_does_not_break_the_call():
    assert log.level("chatty") == logging.WARNING and log.level("info") == logging.INFO
    out, code = run(PODPLUMB_LOG_LEVEL="chatty")
    assert code == 0 and out["ips"]
