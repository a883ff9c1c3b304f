"""sbr chained after bridge: the pod interface's routes in a table of their own, a rule per address."""

import pytest

from podplumb.runtime import Network, PluginFailed, exec_plugin
from tests import kernel
from tests.conftest import reference_available
from tests.netns.bridge_helpers import pod_addresses
from tests.netns.meta_helpers import VERSIONS, chain, reference_bin


def rules(ns, family="-4"):
    return [r for r in kernel.ip_json(family, "rule", "show", ns=ns) if r.get("src") not in (None, "all")]


def table(ns, number, family="-4"):
    return sorted(r["dst"] for r in kernel.ip_json(family, "route", "show", "table", str(number), ns=ns))


@pytest.mark.parametrize("version", VERSIONS)
def test_sbr_rule_and_table(cni_bin, host_ns, netns, data_dir, version):
    net = Network(chain(data_dir, {"type": "sbr"}, version=version), cni_bin, host_ns=host_ns)
    pod = netns("pod")
    kernel.sh("ip", "rule", "add", "from", "192.0.2.9", "lookup", "100", ns=pod)   # table 100 is taken
    result = net.add("ctr", kernel.netns_path(pod))
    assert result["cniVersion"] == version
    address = pod_addresses(result)
    [rule] = [r for r in rules(pod) if r["src"] == address[4]]
    assert rule["table"] == "101"
    assert table(pod, 101) == ["10.77.0.0/24", "default"]
    assert table(pod, "main") == []
    [rule6] = [r for r in rules(pod, "-6") if r["src"] == address[6]]
    assert rule6["table"] == "101" and "default" in table(pod, 101, "-6")
    gateway = next(ip["gateway"] for ip in result["ips"] if "." in ip["address"])
    assert kernel.sh("ping", "-c1", "-W2", "-I", address[4], gateway, ns=pod, check=False).returncode == 0
    if version >= "0.4.0":   # sbr's own CHECK: bridge's (as the reference's) looks for routes in main
        sbr = net.conflist["plugins"][-1]
        config = net.config(sbr, prev_result=result)
        net._call(sbr, "CHECK", config, container_id="ctr", netns=kernel.netns_path(pod), ifname="eth0")
        kernel.sh("ip", "rule", "del", "from", address[4], ns=pod)
        with pytest.raises(PluginFailed) as failed:
            net._call(sbr, "CHECK", config, container_id="ctr", netns=kernel.netns_path(pod), ifname="eth0")
        assert failed.value.error["code"] == 105 and address[4] in failed.value.error["details"]
    net.delete("ctr", kernel.netns_path(pod))
    net.delete("ctr", kernel.netns_path(pod))
    assert [r["src"] for r in rules(pod) + rules(pod, "-6")] == ["192.0.2.9"]


def test_configured_table_bad_input_and_del_without_namespace(cni_bin, host_ns, netns, data_dir):
    net = Network(chain(data_dir, {"type": "sbr", "table": 3000}, subnet6=None), cni_bin, host_ns=host_ns)
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    assert [r["table"] for r in rules(pod)] == ["3000"]
    assert table(pod, 3000) == ["10.77.0.0/24", "default"]
    prev = net.cache[("ctr", "eth0")][0]
    for keys, code in (({"table": "x"}, 7), ({"table": 254}, 7), ({"table": 0}, 7), ({}, 7)):
        config = {"cniVersion": "1.1.0", "name": "n", "type": "sbr", **keys}
        if keys:
            config["prevResult"] = prev
        other = netns("pod")
        kernel.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "p0", ns=other)
        run = exec_plugin(cni_bin, "sbr", "ADD", config, container_id="c2", netns=kernel.netns_path(other),
                          ifname="eth0", host_ns=host_ns)
        assert run.code != 0 and run.json["code"] == code, run.stdout
        assert rules(other) == []
    # DEL with the namespace gone or no netns at all is success
    config = {"cniVersion": "1.1.0", "name": "n", "type": "sbr", "prevResult": result}
    for path in ("", "/run/netns/gone-" + pod):
        assert exec_plugin(cni_bin, "sbr", "DEL", config, container_id="ctr", netns=path, ifname="eth0",
                           host_ns=host_ns).code == 0
    net.delete("ctr", kernel.netns_path(pod))
    assert rules(pod) == []


@pytest.mark.skipif(not reference_available(), reason="reference plugins not installed")
def test_same_rules_and_tables_as_reference(cni_bin, host_ns, netns, data_dir, tmp_path):
    seen = []
    for bin_dir in (cni_bin, reference_bin(tmp_path, "sbr", ours=cni_bin)):
        net = Network(chain(data_dir, {"type": "sbr"}, version="1.0.0", subnet6=None), bin_dir, host_ns=host_ns)
        pod = netns("pod")
        result = net.add("ctr", kernel.netns_path(pod))
        address = pod_addresses(result)[4]
        got = [(r["src"] == address, r["table"]) for r in rules(pod)]
        seen.append((got, table(pod, 100), table(pod, "main"), result["ips"][0]["address"].split(".")[-1]))
        net.delete("ctr", kernel.netns_path(pod))
        seen[-1] += (rules(pod),)
    assert seen[0] == seen[1]
