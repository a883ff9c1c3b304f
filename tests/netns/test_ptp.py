"""ptp + host-local against the real kernel: routed veth pairs, dual-stack, masquerade, DEL without a
netns, CHECK, rollback, bad input; and the same configs through the reference plugin."""

import json

import pytest

from cni.nftables import MASQ
from podplumb.runtime import Network, PluginFailed
from tests import kernel
from tests.conftest import REFERENCE_BIN, reference_available
from tests.netns.bridge_helpers import (VERSIONS, add_pods, check_then_delete_twice, host_links, leases,
                                         pod_addresses)
from tests.netns.test_bad_input import assert_clean_error
from tests.netns.test_portmap_env import CLIENT_EXT, HOST_EXT, SERVER_PORT, environment, request, settle

SUBNET4, SUBNET6 = "10.78.0.0/24", "fd78::/64"
GATEWAY = {4: "10.78.0.1", 6: "fd78::1"}


def ptp_conflist(data_dir, version="1.1.0", **keys):
    plugin = {"type": "ptp", "ipMasq": True, "mtu": 1400,
              "ipam": {"type": "host-local", "dataDir": data_dir,
                       "ranges": [[{"subnet": SUBNET4}], [{"subnet": SUBNET6}]],
                       "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "192.0.2.0/24", "gw": "10.78.0.1"}]},
              **keys}
    return {"cniVersion": version, "name": kernel.unique("ptp-", 12), "plugins": [plugin]}


def _masq_rules(host_ns) -> str:
    return kernel.sh("nft", "list", "table", "inet", MASQ.table.name, ns=host_ns, check=False).stdout


def _host_veths(host_ns) -> list:
    return [link for link in host_links(host_ns) if link.startswith("veth")]


@pytest.mark.parametrize("version", VERSIONS)
def test_lifecycle_every_version(plugin_host, netns, data_dir, version):
    conflist = ptp_conflist(data_dir, version)
    net = plugin_host.network(conflist)
    pods, results = add_pods(net, netns)
    for result in results:
        assert result["cniVersion"] == version
        host_end, pod_end = result["interfaces"]
        assert host_end["name"].startswith("veth") and "sandbox" not in host_end
        assert pod_end["name"] == "eth0" and pod_end["sandbox"].startswith("/run/netns/")
        assert [(ip["interface"], ip["gateway"]) for ip in result["ips"]] == [(1, GATEWAY[4]), (1, GATEWAY[6])]
        assert {r["dst"] for r in result["routes"]} == {"0.0.0.0/0", "::/0", "192.0.2.0/24"}

    a, b = (pod_addresses(r) for r in results)
    settle(plugin_host.ns, *pods)   # the veths' link-local addresses: IPv6 forwarding waits for their DAD
    for family in (4, 6):
        assert kernel.ping(plugin_host.ns, a[family]), f"host to pod over IPv{family}"
        assert kernel.ping(pods[0], GATEWAY[family]), f"pod to its gateway over IPv{family}"
        assert kernel.ping(pods[0], b[family], count=3), f"pod to pod through the host over IPv{family}"

    check_then_delete_twice(net, pods, version)
    for p in pods:
        assert "eth0" not in host_links(p)
    assert leases(data_dir, conflist["name"]) == []
    assert _host_veths(plugin_host.ns) == []
    assert "masquerade" not in _masq_rules(plugin_host.ns)


def test_host_and_pod_sides(plugin_host, netns, data_dir):
    net = plugin_host.network(ptp_conflist(data_dir))
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    address = pod_addresses(result)
    host_end = result["interfaces"][0]["name"]
    host_link = kernel.ip_json("addr", "show", host_end, ns=plugin_host.ns)[0]
    assert host_link["mtu"] == 1400
    assert {(a["local"], a["prefixlen"]) for a in host_link["addr_info"] if a["scope"] == "global"} == \
        {(GATEWAY[4], 32), (GATEWAY[6], 128)}
    host_routes = {r["dst"] for r in kernel.ip_json("route", "show", "dev", host_end, ns=plugin_host.ns)}
    host_routes |= {r["dst"] for r in kernel.ip_json("-6", "route", "show", "dev", host_end, ns=plugin_host.ns)}
    assert {address[4], address[6]} <= host_routes
    assert kernel.ip_json("link", "show", "eth0", ns=pod)[0]["mtu"] == 1400
    pod_routes = {(r["dst"], r.get("gateway")) for r in kernel.ip_json("route", "show", ns=pod)}
    assert pod_routes == {("default", GATEWAY[4]), (SUBNET4, GATEWAY[4]), (GATEWAY[4], None),
                          ("192.0.2.0/24", GATEWAY[4])}
    pod_routes6 = {(r["dst"], r.get("gateway")) for r in kernel.ip_json("-6", "route", "show", ns=pod)}
    assert {("default", GATEWAY[6]), (SUBNET6, GATEWAY[6]), (GATEWAY[6], None)} <= pod_routes6
    assert kernel.sh("sysctl", "-n", "net.ipv4.ip_forward", ns=plugin_host.ns).stdout.strip() == "1"
    rules = _masq_rules(plugin_host.ns)
    assert f"saddr {address[4]}" in rules and f"saddr {address[6]}" in rules
    net.delete("ctr", kernel.netns_path(pod))


def test_masquerade_hides_the_pod_from_the_outside(plugin_host, netns, data_dir):
    """A LAN namespace behind the host sees the host's address, not the pod's."""
    net = plugin_host.network(ptp_conflist(data_dir))
    pod, lan = netns("pod"), netns("lan")
    lan_if = kernel.unique("pplan", 15)
    kernel.sh("ip", "link", "add", lan_if, "type", "veth", "peer", "name", "eth0", "netns", lan, ns=plugin_host.ns)
    kernel.sh("ip", "addr", "add", "192.0.2.1/24", "dev", lan_if, ns=plugin_host.ns)
    kernel.sh("ip", "link", "set", lan_if, "up", ns=plugin_host.ns)
    kernel.sh("ip", "addr", "add", "192.0.2.2/24", "dev", "eth0", ns=lan)
    kernel.sh("ip", "link", "set", "eth0", "up", ns=lan)
    net.add("ctr", kernel.netns_path(pod))
    assert kernel.ping(pod, "192.0.2.2")   # the LAN has no route back to the pod: only masquerading answers
    net.delete("ctr", kernel.netns_path(pod))
    assert not kernel.ping(pod, "192.0.2.2") if "eth0" in host_links(pod) else True


def test_del_with_empty_netns_removes_host_side_from_prev_result(plugin_host, netns, data_dir):
    conflist = ptp_conflist(data_dir)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    net.add("ctr", kernel.netns_path(pod))
    assert len(_host_veths(plugin_host.ns)) == 1
    net.delete("ctr", "")
    assert _host_veths(plugin_host.ns) == []
    assert "eth0" not in host_links(pod)
    assert leases(data_dir, conflist["name"]) == []
    assert "masquerade" not in _masq_rules(plugin_host.ns)


def test_check_detects_missing_pieces(plugin_host, netns, data_dir):
    net = plugin_host.network(ptp_conflist(data_dir))
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    net.check("ctr", kernel.netns_path(pod))
    address = pod_addresses(result)
    kernel.sh("ip", "route", "del", address[4], ns=plugin_host.ns)
    with pytest.raises(PluginFailed) as failed:
        net.check("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 105 and address[4] in failed.value.error["msg"]
    kernel.sh("ip", "-6", "route", "del", "default", ns=pod)
    with pytest.raises(PluginFailed) as failed:
        net.check("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 105
    net.delete("ctr", kernel.netns_path(pod))


def test_failure_after_ipam_rolls_back(plugin_host, netns, data_dir):
    """IPv6 disabled in the pod: adding its address fails after the lease and the veth were made."""
    conflist = ptp_conflist(data_dir)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    for key in ("all", "default"):
        kernel.sh("sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1", ns=pod)
    with pytest.raises(PluginFailed) as failed:
        net.add("ctr", kernel.netns_path(pod))
    assert b"Traceback" not in failed.value.run.stdout
    assert leases(data_dir, conflist["name"]) == []
    assert _host_veths(plugin_host.ns) == [] and "eth0" not in host_links(pod)
    assert "masquerade" not in _masq_rules(plugin_host.ns)


def test_gc_and_status(plugin_host, netns, data_dir):
    conflist = ptp_conflist(data_dir)
    net = plugin_host.network(conflist)
    pods = [netns("pod"), netns("pod")]
    kept = pod_addresses(net.add("ctr0", kernel.netns_path(pods[0])))
    net.add("ctr1", kernel.netns_path(pods[1]))
    net.status()
    net.gc([("ctr0", "eth0")])
    assert leases(data_dir, conflist["name"]) == sorted(kept.values())
    rules = _masq_rules(plugin_host.ns)
    assert rules.count("masquerade") == 2   # ctr0's IPv4 and IPv6 rules only
    net.delete("ctr0", kernel.netns_path(pods[0]))
    net.delete("ctr1", kernel.netns_path(pods[1]))


@pytest.mark.parametrize("change, code, text", [
    ({"ipam": None}, 7, "ptp needs ipam"),
    ({"ipMasq": "yes"}, 7, "ipMasq"),
    ({"mtu": 20}, 7, "mtu"),
    ({"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.78.0.0/33"}]]}}, 7, "10.78.0.0/33"),
])
def test_bad_config_is_refused_cleanly(plugin_host, netns, data_dir, change, code, text):
    plugin = {k: v for k, v in {**ptp_conflist(data_dir)["plugins"][0], **change}.items() if v is not None}
    pod = netns("pod")
    run = plugin_host.exec("ptp", "ADD", {"cniVersion": "1.0.0", "name": "badptp", **plugin},
                           container_id="ctr", netns=kernel.netns_path(pod), ifname="eth0")
    assert_clean_error(run, code, text)
    assert _host_veths(plugin_host.ns) == [] and "eth0" not in host_links(pod)


def test_interface_already_in_the_pod(plugin_host, netns, data_dir):
    conflist = ptp_conflist(data_dir)
    pod = netns("pod")
    kernel.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth9", ns=pod)
    run = plugin_host.exec("ptp", "ADD", {"cniVersion": "1.0.0", "name": conflist["name"],
                                          **conflist["plugins"][0]},
                           container_id="ctr", netns=kernel.netns_path(pod), ifname="eth0")
    assert_clean_error(run, 103, "eth0")
    assert leases(data_dir, conflist["name"]) == [] and _host_veths(plugin_host.ns) == []


def _normalised(result):
    result = json.loads(json.dumps(result))
    for iface in result["interfaces"]:
        iface.pop("mac")
        if "sandbox" in iface:
            iface["sandbox"] = "<netns>"
        else:
            iface.pop("name")   # the host end's name is random on both sides
    return result


def _pod_routes(pod):
    return sorted((r["dst"], r.get("gateway"), r.get("prefsrc"))
                  for args in (("route",), ("-6", "route")) for r in kernel.ip_json(*args, "show", ns=pod)
                  if not r["dst"].startswith("fe80") and r["dst"] != "multicast")


@pytest.mark.skipif(not reference_available(), reason="containernetworking-plugins not installed")
@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_same_results_as_the_reference(cni_bin, netns, tmp_path, version):
    seen = []
    for bin_dir in (REFERENCE_BIN, cni_bin):
        host, pod = netns("pphost"), netns("pod")
        data_dir = tmp_path / kernel.unique("d")
        conflist = dict(ptp_conflist(str(data_dir), version), name="ptpdiff")
        net = Network(conflist, bin_dir, host_ns=host, path=[str(bin_dir)])
        result = net.add("ctr", kernel.netns_path(pod))
        if version >= "0.4.0":
            net.check("ctr", kernel.netns_path(pod))
        seen.append((_normalised(result), _pod_routes(pod)))
        net.delete("ctr", kernel.netns_path(pod))
        assert leases(str(data_dir), "ptpdiff") == []
    assert seen[0][0] == seen[1][0]
    assert seen[0][1] == seen[1][1]


def test_host_port_reaches_a_ptp_pod(cni_bin, host_ns, netns, data_dir):
    """portmap chained after ptp, with the port mapping spelt as containerd sends it."""
    with environment(host_ns, netns, str(cni_bin), data_dir) as env:
        conflist = ptp_conflist(data_dir, "1.0.0", ipMasq=False)
        conflist["plugins"].append({"type": "portmap", "capabilities": {"portMappings": True}})
        env.network = Network(conflist, str(cni_bin), host_ns=host_ns, path=[str(cni_bin)])
        go_style = {"portMappings": [{"HostPort": 18080, "ContainerPort": SERVER_PORT, "Protocol": "tcp",
                                      "HostIP": ""}]}
        pod = env.pod("pod-a", go_style)
        for family in (4, 6):
            assert request(env.client, "tcp", HOST_EXT[family // 6], 18080) == ("pod-a", CLIENT_EXT[family // 6])
        env.delete(pod)
        assert request(env.client, "tcp", HOST_EXT[0], 18080) is None
        assert env.pod_rules_left() == []
