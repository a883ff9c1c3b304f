"""static IPAM through the dispatcher, and the same configs through the reference's static."""

import json
import os
import subprocess

import pytest

from cni import skel
from cni.version import SUPPORTED
from plugins.static.plugin import PLUGIN

REFERENCE = "/usr/lib/cni/static"
ADDRESSES = [{"address": "10.10.0.5/24", "gateway": "10.10.0.254"}, {"address": "fd10::5/64", "gateway": "fd10::1"}]
ROUTES = [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.0.1"}, {"dst": "::/0"}]
DNS = {"nameservers": ["10.10.0.53"], "domain": "example.test", "search": ["example.test"], "options": ["ndots:2"]}


def network(version="1.0.0", **ipam) -> dict:
    ipam = ipam or {"addresses": ADDRESSES, "routes": ROUTES, "dns": DNS}
    return {"cniVersion": version, "name": "staticnet", "ipam": {"type": "static", **ipam}}


def _env(command, cni_args=""):
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
            "CNI_NETNS": "/dev/null", "CNI_ARGS": cni_args}   # static never enters the netns


def call(command, conf, cni_args="", executable=None):
    """(parsed stdout, error code or 0): ours in-process, or an executable."""
    stdin = json.dumps(conf).encode()
    if executable:
        proc = subprocess.run([executable], input=stdin, env=_env(command, cni_args), capture_output=True)
        out, status = proc.stdout, proc.returncode
    else:
        out, status = skel.run(PLUGIN, _env(command, cni_args), stdin)
    parsed = json.loads(out) if out.strip() else None
    return parsed, (parsed["code"] if status else 0)


@pytest.mark.parametrize("version", [v for v in SUPPORTED if v >= "0.3.0"])
def test_add_every_version(version):
    out, code = call("ADD", network(version))
    assert code == 0, out
    assert out["cniVersion"] == version
    assert [(ip["address"], ip["gateway"]) for ip in out["ips"]] == [("10.10.0.5/24", "10.10.0.254"),
                                                                     ("fd10::5/64", "fd10::1")]
    assert out["routes"] == ROUTES and out["dns"] == DNS
    assert all(("version" in ip) == (version < "1.0.0") for ip in out["ips"])
    for command in ("DEL", "CHECK") if version >= "0.4.0" else ("DEL",):
        assert call(command, dict(network(version), prevResult=out))[1] == 0
    if version == "1.1.0":
        assert call("STATUS", network(version))[1] == 0
        assert call("GC", dict(network(version), **{"cni.dev/valid-attachments": []}))[1] == 0


def test_addresses_from_cni_args_runtime_config_and_args():
    out, _ = call("ADD", network(addresses=[{"address": "10.10.0.5/24"}]), cni_args="IP=10.10.0.6/24,fd10::6/64;GATEWAY=10.10.0.1;IgnoreUnknown=1")
    assert [(ip["address"], ip.get("gateway")) for ip in out["ips"]] == \
        [("10.10.0.5/24", None), ("10.10.0.6/24", "10.10.0.1"), ("fd10::6/64", None)]
    conf = dict(network(), args={"cni": {"ips": ["10.20.0.5/24"]}})
    assert [ip["address"] for ip in call("ADD", conf)[0]["ips"]] == ["10.20.0.5/24"]
    # runtimeConfig ips replace everything else; Go field-name spelling of the key works too
    conf = dict(conf, runtimeConfig={"IPs": ["10.30.0.5/24", "fd30::5/64"]})
    assert [ip["address"] for ip in call("ADD", conf)[0]["ips"]] == ["10.30.0.5/24", "fd30::5/64"]


def test_go_style_keys():
    conf = {"cniVersion": "1.0.0", "name": "n", "IPAM": {"Type": "static", "Addresses": [{"Address": "10.1.0.5/24",
            "Gateway": "10.1.0.1"}], "Routes": [{"Dst": "0.0.0.0/0"}], "DNS": {"Nameservers": ["10.1.0.53"]}}}
    out, code = call("ADD", conf)
    assert code == 0, out
    assert out["ips"] == [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}]
    assert out["routes"] == [{"dst": "0.0.0.0/0"}] and out["dns"] == {"nameservers": ["10.1.0.53"]}


@pytest.mark.parametrize("ipam, cni_args, code, text", [
    ({"addresses": [{"address": "10.1.0.5"}]}, "", 7, "10.1.0.5"),
    ({"addresses": [{"address": "10.1.0.5/33"}]}, "", 7, "10.1.0.5/33"),
    ({"addresses": [{"address": "10.1.0.5/24", "gateway": "fd00::1"}]}, "", 7, "family"),
    ({"addresses": [{"address": "10.1.0.5/24", "gateway": "nope"}]}, "", 7, "nope"),
    ({"addresses": [{"address": "10.1.0.5/24"}, {"address": "10.1.0.5/16"}]}, "", 7, "twice"),
    ({"addresses": "10.1.0.5/24"}, "", 7, "ipam.addresses"),
    ({"addresses": []}, "", 7, "no address"),
    ({"addresses": [{"address": "10.1.0.5/24"}], "routes": [{"dst": "10.2.0.0"}]}, "", 7, "10.2.0.0"),
    ({"addresses": [{"address": "10.1.0.5/24"}], "dns": {"nameservers": "10.1.0.53"}}, "", 7, "nameservers"),
    ({}, "IP=10.1.0.300/24", 4, "10.1.0.300"),
    ({"addresses": [{"address": f"10.1.{i}.5/24"} for i in range(65)]}, "", 7, "too many"),
    ({"addresses": [{"address": "10.1.0.5/24"}]}, "GATEWAY=10.1.0", 4, "10.1.0"),
])
def test_bad_input(ipam, cni_args, code, text):
    out, got = call("ADD", network(**ipam) if ipam else network(addresses=None), cni_args)
    assert got == code, out
    assert text in out["msg"] + " " + out.get("details", "")


@pytest.mark.skipif(not os.access(REFERENCE, os.X_OK), reason="reference static missing")
@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
@pytest.mark.parametrize("case", ["full", "cni-args", "runtime-config", "args-cni"])
def test_same_result_as_the_reference(version, case):
    conf, cni_args = network(version), ""
    if case == "cni-args":
        conf, cni_args = network(version, addresses=[{"address": "10.10.0.5/24"}]), "IP=10.10.0.6/24,fd10::6/64;GATEWAY=10.10.0.1,fd10::1"
    elif case == "runtime-config":
        conf["runtimeConfig"] = {"ips": ["10.30.0.5/24", "fd30::5/64"]}
    elif case == "args-cni":
        conf["args"] = {"cni": {"ips": ["10.20.0.5/24"]}}
    ours, theirs = call("ADD", conf, cni_args), call("ADD", conf, cni_args, executable=REFERENCE)
    assert theirs[1] == 0, theirs
    assert ours == theirs
