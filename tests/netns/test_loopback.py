"""loopback: lo up with its addresses on ADD, down on DEL, verified by CHECK; compared with the reference."""

import pytest

from cni.version import SUPPORTED
from podplumb.runtime import exec_plugin
from tests import kernel
from tests.conftest import REFERENCE_BIN, reference_available

VERSIONS = [v for v in SUPPORTED if v >= "0.3.0"]


def _config(version: str, **extra) -> dict:
    return {"cniVersion": version, "name": "lonet", "type": "loopback", **extra}


def _pod(netns) -> str:
    """A namespace whose lo is down, as a runtime makes it."""
    pod = netns("pplo")
    kernel.sh("ip", "link", "set", "lo", "down", ns=pod)
    return pod


def _lo(ns: str) -> dict:
    return kernel.ip_json("addr", "show", "lo", ns=ns)[0]


def _call(plugin_host, command, version, netns, **extra):
    return plugin_host.exec("loopback", command, _config(version, **extra), container_id="c1",
                            netns=netns, ifname="lo")


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del(plugin_host, netns, version):
    pod = _pod(netns)
    path = kernel.netns_path(pod)
    assert "UP" not in _lo(pod)["flags"]
    add = _call(plugin_host, "ADD", version, path)
    assert add.code == 0, add.stdout
    result = add.json
    assert result["cniVersion"] == version
    assert result["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": path}]
    assert [ip["address"] for ip in result["ips"]] == ["127.0.0.1/8", "::1/128"]
    assert "UP" in _lo(pod)["flags"]
    assert kernel.ping(pod, "127.0.0.1")
    if version >= "0.4.0":
        assert _call(plugin_host, "CHECK", version, path, prevResult=result).code == 0
    assert _call(plugin_host, "DEL", version, path, prevResult=result).code == 0
    assert "UP" not in _lo(pod)["flags"]
    if version >= "0.4.0":
        check = _call(plugin_host, "CHECK", version, path, prevResult=result)
        assert check.code != 0 and "down" in check.json["msg"]
    assert _call(plugin_host, "DEL", version, path).code == 0          # idempotent


def test_del_without_namespace_succeeds(plugin_host, netns):
    gone = kernel.netns_path(kernel.unique("ppgone-", 20))
    assert _call(plugin_host, "DEL", "1.0.0", gone).code == 0
    assert _call(plugin_host, "DEL", "1.0.0", "").code == 0


def test_add_into_missing_namespace_fails_cleanly(plugin_host):
    run = _call(plugin_host, "ADD", "1.0.0", kernel.netns_path(kernel.unique("ppgone-", 20)))
    assert run.code != 0 and run.json["code"] == 3


def test_status_and_gc(plugin_host):
    assert plugin_host.exec("loopback", "STATUS", _config("1.1.0")).code == 0
    assert plugin_host.exec("loopback", "GC", _config("1.1.0", **{"cni.dev/valid-attachments": []})).code == 0


@pytest.mark.skipif(not reference_available(), reason="reference plugins missing")
@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_same_result_as_the_reference(cni_bin, netns, version):
    results = []
    for bin_dir in (REFERENCE_BIN, cni_bin):
        pod = _pod(netns)
        path = kernel.netns_path(pod)
        run = exec_plugin(bin_dir, "loopback", "ADD", _config(version), container_id="c1", netns=path, ifname="lo")
        assert run.code == 0, run.stdout
        result = run.json
        result["interfaces"][0]["sandbox"] = "<netns>"
        for ip in result["ips"]:
            ip.pop("version", None)   # 0.3.x: the spec asks for it, the reference's loopback leaves it out
        results.append((result, _lo(pod)["flags"], [a["local"] for a in _lo(pod)["addr_info"]]))
    assert results[0] == results[1]
