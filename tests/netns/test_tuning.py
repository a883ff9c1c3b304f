"""tuning chained after bridge: sysctls and link settings in the pod, originals back on DEL."""

import json
import os

import pytest

from podplumb.runtime import Network, PluginFailed, exec_plugin
from tests import kernel
from tests.conftest import reference_available
from tests.netns.meta_helpers import VERSIONS, chain, link, reference_bin, sysctl

SYSCTLS = {"net.ipv4.conf.eth0.rp_filter": "2", "net.ipv4.ping_group_range": "0 2147483647"}
MAC = "0a:58:0a:4d:00:42"


def tuning(tmp_path, **keys):
    return {"type": "tuning", "dataDir": str(tmp_path / "tuning"), **keys}


@pytest.mark.parametrize("version", VERSIONS)
def test_tuning_sets_and_restores(cni_bin, host_ns, netns, data_dir, tmp_path, version):
    conf = tuning(tmp_path, mtu=1400, mac=MAC, sysctl=SYSCTLS, promisc=True, allmulti=True, txQLen=500)
    conflist = chain(data_dir, conf, version=version)
    net = Network(conflist, cni_bin, host_ns=host_ns)
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    eth0 = link(pod)
    assert eth0["mtu"] == 1400 and eth0["address"] == MAC and eth0["txqlen"] == 500
    assert "PROMISC" in eth0["flags"] and "ALLMULTI" in eth0["flags"]
    assert sysctl(pod, "net.ipv4.conf.eth0.rp_filter") == "2"
    assert sysctl(pod, "net.ipv4.ping_group_range").split() == ["0", "2147483647"]
    pod_iface = next(i for i in result["interfaces"] if i.get("sandbox"))
    assert pod_iface["mac"] == MAC and result["cniVersion"] == version
    if version >= "0.4.0":
        net.check("ctr", kernel.netns_path(pod))
        kernel.sh("ip", "link", "set", "eth0", "mtu", "1300", ns=pod)
        with pytest.raises(PluginFailed) as failed:
            net.check("ctr", kernel.netns_path(pod))
        assert failed.value.error["code"] == 105 and "mtu" in failed.value.error["details"]
    # tuning's own DEL puts the pod's values back; then the whole chain goes
    [state_file] = os.listdir(tmp_path / "tuning")
    original_mac = json.loads((tmp_path / "tuning" / state_file).read_text())["link"]["mac"]
    assert original_mac != MAC
    prev = net.cache[("ctr", "eth0")][0]
    run = net._call(conf, "DEL", net.config(conf, prev_result=prev), container_id="ctr",
                    netns=kernel.netns_path(pod), ifname="eth0")
    assert run.code == 0
    eth0 = link(pod)
    assert eth0["mtu"] == 1500 and eth0["address"] == original_mac
    assert "PROMISC" not in eth0["flags"] and "ALLMULTI" not in eth0["flags"] and eth0["txqlen"] == 1000
    assert sysctl(pod, "net.ipv4.conf.eth0.rp_filter") != "2"
    assert os.listdir(tmp_path / "tuning") == []
    net.delete("ctr", kernel.netns_path(pod))
    net.delete("ctr", kernel.netns_path(pod))


@pytest.mark.parametrize("keys, words", [
    ({"sysctl": {"kernel.hostname": "x"}}, "net."),
    ({"sysctl": {"net/ipv4/ip_forward": "1"}}, "'/'"),
    ({"sysctl": {"net.ipv4..conf": "1"}}, ".."),
    ({"sysctl": {"net.ipv4.conf.eth0.rp_filter": 2}}, "string"),
    ({"sysctl": ["net.ipv4.ip_forward"]}, "object"),
    ({"mac": "zz:00:00:00:00:01"}, "mac"),
    ({"mac": "01:00:00:00:00:01"}, "multicast"),
    ({"mtu": "1400"}, "mtu"),
    ({"mtu": 10}, "mtu"),
    ({"promisc": "yes"}, "promisc"),
    ({"txQLen": -1}, "txQLen"),
    ({"dataDir": "relative/dir"}, "dataDir"),
])
def test_bad_input_is_refused_and_changes_nothing(cni_bin, host_ns, netns, tmp_path, keys, words):
    pod = netns("pod")
    kernel.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", ns=pod)
    before = link(pod), sysctl(pod, "net.ipv4.conf.eth0.rp_filter")
    config = {"cniVersion": "1.1.0", "name": "tun", "type": "tuning", "dataDir": str(tmp_path / "t"), **keys,
              "prevResult": {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "x"}]}}
    run = exec_plugin(cni_bin, "tuning", "ADD", config, container_id="c", netns=kernel.netns_path(pod),
                      ifname="eth0", host_ns=host_ns)
    assert run.code != 0 and run.json["code"] == 7, run.stdout
    assert words in run.json["msg"] + run.json.get("details", "")
    assert (link(pod), sysctl(pod, "net.ipv4.conf.eth0.rp_filter")) == before
    assert not os.path.exists(tmp_path / "t") or os.listdir(tmp_path / "t") == []


def test_no_prev_result_and_failed_add_rolls_back(cni_bin, host_ns, netns, tmp_path):
    pod = netns("pod")
    kernel.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", ns=pod)
    base = {"cniVersion": "1.0.0", "name": "tun", "type": "tuning", "dataDir": str(tmp_path / "t")}
    run = exec_plugin(cni_bin, "tuning", "ADD", dict(base, mtu=1400), container_id="c",
                      netns=kernel.netns_path(pod), ifname="eth0", host_ns=host_ns)
    assert run.json["code"] == 7 and "prevResult" in run.json["details"]
    before = link(pod), sysctl(pod, "net.ipv4.conf.eth0.rp_filter")
    # the kernel refuses the second sysctl's value: the first is put back, the link is untouched
    config = dict(base, mtu=1400, sysctl={"net.ipv4.conf.eth0.rp_filter": "2",
                                          "net.ipv4.ip_local_port_range": "not numbers"},
                  prevResult={"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "x"}]})
    run = exec_plugin(cni_bin, "tuning", "ADD", config, container_id="c", netns=kernel.netns_path(pod),
                      ifname="eth0", host_ns=host_ns)
    assert run.code != 0 and "ip_local_port_range" in run.json["msg"]
    assert (link(pod), sysctl(pod, "net.ipv4.conf.eth0.rp_filter")) == before
    assert os.listdir(tmp_path / "t") == []
    config["sysctl"] = {"net.ipv4.no_such_key": "1"}
    run = exec_plugin(cni_bin, "tuning", "ADD", config, container_id="c", netns=kernel.netns_path(pod),
                      ifname="eth0", host_ns=host_ns)
    assert run.json["code"] == 7 and "does not exist" in run.json["msg"]
    # DEL of something never added, and with the namespace gone, is success
    for netns_path in (kernel.netns_path(pod), "/run/netns/gone-" + pod):
        assert exec_plugin(cni_bin, "tuning", "DEL", base, container_id="c", netns=netns_path,
                           ifname="eth0", host_ns=host_ns).code == 0


@pytest.mark.skipif(not reference_available(), reason="reference plugins not installed")
def test_same_pod_state_as_reference(cni_bin, host_ns, netns, data_dir, tmp_path):
    """The same chain through the reference tuning and ours leaves the pod the same, before and after DEL."""
    states = []
    for bin_dir in (cni_bin, reference_bin(tmp_path, "tuning", ours=cni_bin)):
        conf = tuning(tmp_path, mtu=1450, mac=MAC, sysctl=SYSCTLS, promisc=True)   # 1.1.1 has no txQLen
        conflist = chain(data_dir, conf, version="1.0.0", bridge=kernel.unique("ppbr"), subnet6=None)
        net = Network(conflist, bin_dir, host_ns=host_ns)
        pod = netns("pod")
        result = net.add("ctr", kernel.netns_path(pod))
        added = link(pod)
        values = {k: added[k] for k in ("mtu", "address", "txqlen")}, sorted(added["flags"])
        sysctls = [sysctl(pod, k).split() for k in SYSCTLS]
        pod_iface = next(i for i in result["interfaces"] if i.get("sandbox"))
        prev = net.cache[("ctr", "eth0")][0]
        net._call(conf, "DEL", net.config(conf, prev_result=prev), container_id="ctr",
                  netns=kernel.netns_path(pod), ifname="eth0")
        restored = link(pod)
        states.append((values, sysctls, pod_iface["mac"], restored["mtu"], sorted(restored["flags"]),
                       restored["txqlen"]))
        net.delete("ctr", kernel.netns_path(pod))
    assert states[0] == states[1]


def test_mac_precedence_runtime_config_then_cni_args_then_config(cni_bin, host_ns, netns, tmp_path):
    pod = netns("pod")
    kernel.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", ns=pod)
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "x"}]}
    config = {"cniVersion": "1.1.0", "name": "tun", "type": "tuning", "dataDir": str(tmp_path / "t"),
              "mac": "0a:00:00:00:00:01", "prevResult": prev}
    for extra, cni_args, wanted in (({}, "", "0a:00:00:00:00:01"),
                                    ({}, "IgnoreUnknown=1;MAC=0a:00:00:00:00:02", "0a:00:00:00:00:02"),
                                    ({"runtimeConfig": {"mac": "0a:00:00:00:00:03"}}, "MAC=0a:00:00:00:00:02",
                                     "0a:00:00:00:00:03")):
        run = exec_plugin(cni_bin, "tuning", "ADD", {**config, **extra}, container_id="c",
                          netns=kernel.netns_path(pod), ifname="eth0", cni_args=cni_args, host_ns=host_ns)
        assert run.code == 0, run.stdout
        assert link(pod)["address"] == wanted == run.json["interfaces"][0]["mac"]
