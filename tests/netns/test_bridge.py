"""bridge + host-local against the real kernel, each test on its own fake host and pod namespaces."""

import concurrent.futures
import ipaddress
import json

import pytest

from podplumb.runtime import PluginFailed
from tests import kernel
from tests.netns.bridge_helpers import (VERSIONS, add_pods, bridge_conflist, check_then_delete_twice, host_links,
                                         leases, pod_addresses)


@pytest.mark.parametrize("version", VERSIONS)
def test_lifecycle_every_version(plugin_host, netns, data_dir, version):
    conflist = bridge_conflist(data_dir, version)
    net = plugin_host.network(conflist)
    pods, results = add_pods(net, netns)

    for result in results:
        assert result["cniVersion"] == version
        assert [i["name"] for i in result["interfaces"]][0] == conflist["plugins"][0]["bridge"]
        assert result["interfaces"][2]["sandbox"].startswith("/run/netns/")
        for ip in result["ips"]:
            assert ip["interface"] == 2
            assert ("version" in ip) == (version < "1.0.0")
        assert {r["dst"] for r in result["routes"]} == {"0.0.0.0/0", "::/0"}

    a, b = (pod_addresses(r) for r in results)
    assert a[4] != b[4] and a[6] != b[6]
    for family in (4, 6):
        assert kernel.ping(pods[0], b[family]), f"pod to pod over IPv{family}"
        gateway = next(ip["gateway"] for ip in results[0]["ips"] if ipaddress.ip_interface(ip["address"]).version == family)
        assert kernel.ping(pods[1], gateway), f"pod to gateway over IPv{family}"

    check_then_delete_twice(net, pods, version)
    for p in pods:
        assert "eth0" not in host_links(p)
    assert leases(data_dir, conflist["name"]) == []
    assert not any(l.startswith("veth") for l in host_links(plugin_host.ns))


def test_a_bridge_port_has_no_ipv6_of_its_own(plugin_host, netns, data_dir):
    """The host side of a pod's veth is a bridge port: no link-local address or route of its own on the
    host for each pod, while IPv6 between the pods and to the gateway still goes through the bridge."""
    net = plugin_host.network(bridge_conflist(data_dir))
    pods, results = add_pods(net, netns)
    for result in results:
        port = result["interfaces"][1]["name"]
        assert kernel.sh("sysctl", "-n", f"net.ipv6.conf.{port}.disable_ipv6", ns=plugin_host.ns).stdout.strip() == "1"
        assert kernel.sh("ip", "-6", "address", "show", "dev", port, ns=plugin_host.ns).stdout.strip() == ""
        assert kernel.sh("ip", "-6", "route", "show", "table", "all", "dev", port, ns=plugin_host.ns).stdout.strip() == ""
    assert kernel.ping(pods[0], pod_addresses(results[1])[6])
    assert kernel.ping(pods[1], "fd77::1")
    check_then_delete_twice(net, pods, "1.1.0")


def test_pod_interface_as_the_reference_makes_it(plugin_host, netns, data_dir):
    net = plugin_host.network(bridge_conflist(data_dir, subnet4="10.77.0.0/24"))
    pod = netns("pod")
    net.add("ctr", kernel.netns_path(pod))
    [v4] = [a for a in kernel.ip_json("-4", "addr", "show", "eth0", ns=pod)[0]["addr_info"]]
    assert v4["broadcast"] == "10.77.0.255"
    assert kernel.sh("cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify", ns=pod).stdout.strip() == "1"
    assert kernel.sh("cat", "/proc/sys/net/ipv4/conf/all/arp_notify", ns=plugin_host.ns).stdout.strip() == "0"
    net.delete("ctr", kernel.netns_path(pod))


def test_check_detects_removed_address_and_route(plugin_host, netns, data_dir):
    net = plugin_host.network(bridge_conflist(data_dir))
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    net.check("ctr", kernel.netns_path(pod))

    kernel.sh("ip", "-6", "route", "del", "default", ns=pod)
    with pytest.raises(PluginFailed) as failed:
        net.check("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 105 and "::/0" in failed.value.error["msg"]

    address = next(ip["address"] for ip in result["ips"] if "." in ip["address"])
    kernel.sh("ip", "addr", "del", address, "dev", "eth0", ns=pod)
    with pytest.raises(PluginFailed) as failed:
        net.check("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 105 and address in failed.value.error["msg"]
    net.delete("ctr", kernel.netns_path(pod))


def test_del_after_namespace_is_gone(plugin_host, netns, data_dir):
    conflist = bridge_conflist(data_dir)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    net.add("ctr", kernel.netns_path(pod))
    kernel.del_netns(pod)
    net.delete("ctr", kernel.netns_path(pod))
    assert leases(data_dir, conflist["name"]) == []


def test_del_with_empty_netns_removes_host_side_from_prev_result(plugin_host, netns, data_dir):
    conflist = bridge_conflist(data_dir)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    host_veth = result["interfaces"][1]["name"]
    assert host_veth in host_links(plugin_host.ns)
    net.delete("ctr", netns="")   # containerd sends DEL this way once the sandbox is gone
    assert host_veth not in host_links(plugin_host.ns)
    assert "eth0" not in host_links(pod)
    assert leases(data_dir, conflist["name"]) == []


def test_failure_after_ipam_leaves_nothing(plugin_host, netns, data_dir):
    # The kernel refuses a route via a gateway that is not on-link: the ADD fails after IPAM,
    # the veth and the addresses were made, and all of it must be undone.
    conflist = bridge_conflist(data_dir, subnet6=None,
                               ipam_extra={"routes": [{"dst": "10.200.0.0/16", "gw": "192.0.2.1"}]})
    net = plugin_host.network(conflist)
    pod = netns("pod")
    before = host_links(plugin_host.ns)
    with pytest.raises(PluginFailed) as failed:
        net.add("ctr", kernel.netns_path(pod))
    assert "10.200.0.0/16" in failed.value.error["msg"]
    assert leases(data_dir, conflist["name"]) == []
    assert host_links(pod) == ["lo"]
    assert host_links(plugin_host.ns) == before


def test_32_concurrent_adds_on_a_new_bridge(plugin_host, netns, data_dir):
    conflist = bridge_conflist(data_dir, subnet6=None)
    net = plugin_host.network(conflist)
    pods = [netns("pod") for _ in range(32)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda i: net.add(f"ctr{i}", kernel.netns_path(pods[i])), range(32)))
    addresses = {pod_addresses(r)[4] for r in results}
    assert len(addresses) == 32
    assert kernel.ping(pods[0], pod_addresses(results[31])[4])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: net.delete(f"ctr{i}", kernel.netns_path(pods[i])), range(32)))
    assert leases(data_dir, conflist["name"]) == []


def test_gc_releases_attachments_not_valid(plugin_host, netns, data_dir):
    conflist = bridge_conflist(data_dir)
    net = plugin_host.network(conflist)
    pods = [netns("pod") for _ in range(3)]
    results = [net.add(f"ctr{i}", kernel.netns_path(p)) for i, p in enumerate(pods)]
    net.gc([("ctr1", "eth0")])
    kept = pod_addresses(results[1])
    assert leases(data_dir, conflist["name"]) == sorted([kept[4], kept[6]])
    net.status()
    for i, p in enumerate(pods):
        net.delete(f"ctr{i}", kernel.netns_path(p))


def test_status_and_gc_need_version_1_1(plugin_host, data_dir):
    conflist = bridge_conflist(data_dir, "1.0.0")
    net = plugin_host.network(conflist)
    for call in (net.status, lambda: net.gc([])):
        with pytest.raises(PluginFailed) as failed:
            call()
        assert failed.value.error["code"] == 1


def test_mtu_mac_hairpin_and_isolation(plugin_host, netns, data_dir):
    conflist = bridge_conflist(data_dir, mtu=1400, hairpinMode=True, portIsolation=True)
    conflist["plugins"][0]["capabilities"] = {"mac": True}
    net = plugin_host.network(conflist)
    pods = [netns("pod"), netns("pod")]
    result = net.add("ctr0", kernel.netns_path(pods[0]), capability_args={"mac": "0a:58:0a:4d:00:99"})
    other = net.add("ctr1", kernel.netns_path(pods[1]))
    pod_link = kernel.ip_json("-d", "link", "show", "eth0", ns=pods[0])[0]
    assert pod_link["mtu"] == 1400 and pod_link["address"] == "0a:58:0a:4d:00:99"
    assert result["interfaces"][2]["mac"] == "0a:58:0a:4d:00:99"
    port = kernel.ip_json("-d", "link", "show", result["interfaces"][1]["name"], ns=plugin_host.ns)[0]
    assert port["mtu"] == 1400
    assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert port["linkinfo"]["info_slave_data"]["isolated"] is True
    # Isolated ports do not reach each other, but still reach the gateway.
    assert not kernel.ping(pods[0], pod_addresses(other)[4])
    assert kernel.ping(pods[0], "10.77.0.1")
    net.delete("ctr0", kernel.netns_path(pods[0]))
    net.delete("ctr1", kernel.netns_path(pods[1]))


def test_vlan_is_applied_or_refused_cleanly(plugin_host, netns, data_dir):
    conflist = bridge_conflist(data_dir, subnet6=None, vlan=100, vlanTrunk=[{"id": 200}, {"minID": 300, "maxID": 302}],
                               preserveDefaultVlan=False)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    before = host_links(plugin_host.ns)
    try:
        result = net.add("ctr", kernel.netns_path(pod))
    except PluginFailed as failed:
        # This kernel has no CONFIG_BRIDGE_VLAN_FILTERING: the error must say so and leave nothing.
        assert "VLAN filtering" in failed.error["msg"]
        assert host_links(plugin_host.ns) == before
        assert leases(data_dir, conflist["name"]) == []
        return
    port = result["interfaces"][1]["name"]
    vlans = json.loads(kernel.sh("bridge", "-j", "vlan", "show", "dev", port, ns=plugin_host.ns).stdout)
    vids = {v["vlan"] for v in vlans[0]["vlans"]}
    assert vids == {100, 200, 300, 301, 302}
    net.delete("ctr", kernel.netns_path(pod))


def test_disable_container_interface_leaves_it_down(plugin_host, netns, data_dir):
    net = plugin_host.network(bridge_conflist(data_dir, disableContainerInterface=True))
    pod = netns("pod")
    net.add("ctr", kernel.netns_path(pod))
    link = kernel.ip_json("addr", "show", "eth0", ns=pod)[0]
    assert "UP" not in link["flags"]
    assert not [a for a in link["addr_info"] if a["scope"] == "global"]
    net.check("ctr", kernel.netns_path(pod))
    net.delete("ctr", kernel.netns_path(pod))


def test_force_address_replaces_an_old_gateway(plugin_host, netns, data_dir):
    conflist = bridge_conflist(data_dir, subnet6=None)
    bridge = conflist["plugins"][0]["bridge"]
    kernel.sh("ip", "link", "add", bridge, "type", "bridge", ns=plugin_host.ns)
    kernel.sh("ip", "addr", "add", "10.77.0.254/24", "dev", bridge, ns=plugin_host.ns)
    pod = netns("pod")
    with pytest.raises(PluginFailed) as failed:
        plugin_host.network(conflist).add("ctr", kernel.netns_path(pod))
    assert "10.77.0.254/24" in failed.value.error["msg"]
    assert leases(data_dir, conflist["name"]) == []

    conflist["plugins"][0]["forceAddress"] = True
    net = plugin_host.network(conflist)
    net.add("ctr", kernel.netns_path(pod))
    addresses = [a["local"] for a in kernel.ip_json("addr", "show", bridge, ns=plugin_host.ns)[0]["addr_info"]
                 if a["family"] == "inet"]
    assert addresses == ["10.77.0.1"]
    net.delete("ctr", kernel.netns_path(pod))


def test_add_refuses_an_interface_name_already_in_the_pod(plugin_host, netns, data_dir):
    conflist = bridge_conflist(data_dir)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    net.add("ctr", kernel.netns_path(pod))
    held = leases(data_dir, conflist["name"])
    with pytest.raises(PluginFailed) as failed:
        net.add("ctr2", kernel.netns_path(pod))
    assert "eth0 already exists" in failed.value.error["msg"]
    assert leases(data_dir, conflist["name"]) == held   # the first pod's lease is untouched
    net.delete("ctr", kernel.netns_path(pod))


def _no_attachment_rules(ns) -> bool:
    """DEL leaves no chain or map element of the pod; the empty tables stay until a GC."""
    ruleset = kernel.sh("nft", "list", "ruleset", ns=ns).stdout
    return "chain pp-" not in ruleset and "jump pp-" not in ruleset


def _outside(host_ns, netns):
    """A namespace beyond the host with no route back to the pods: only masquerade reaches it."""
    outside = netns("out")
    kernel.sh("ip", "link", "add", "to-out", "type", "veth", "peer", "name", "uplink", "netns", outside, ns=host_ns)
    kernel.sh("ip", "link", "set", "to-out", "up", ns=host_ns)
    kernel.sh("ip", "addr", "add", "198.18.0.1/24", "dev", "to-out", ns=host_ns)
    kernel.sh("ip", "addr", "add", "fd18::1/64", "dev", "to-out", "nodad", ns=host_ns)
    kernel.sh("ip", "link", "set", "uplink", "up", ns=outside)
    kernel.sh("ip", "addr", "add", "198.18.0.2/24", "dev", "uplink", ns=outside)
    kernel.sh("ip", "addr", "add", "fd18::2/64", "dev", "uplink", "nodad", ns=outside)
    return outside


@pytest.mark.parametrize("ip_masq", [True, False])
def test_ip_masq_reaches_outside(plugin_host, netns, data_dir, ip_masq):
    _outside(plugin_host.ns, netns)
    conflist = bridge_conflist(data_dir, ipMasq=ip_masq)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    net.add("ctr", kernel.netns_path(pod))
    assert kernel.ping(pod, "198.18.0.2") == ip_masq
    assert kernel.ping(pod, "fd18::2") == ip_masq
    if ip_masq:
        net.check("ctr", kernel.netns_path(pod))
        kernel.sh("nft", "flush", "map", "inet", "podplumb-ipmasq", "saddr4", ns=plugin_host.ns)
        with pytest.raises(PluginFailed) as failed:
            net.check("ctr", kernel.netns_path(pod))
        assert "masquerade" in failed.value.error["msg"]
    net.delete("ctr", kernel.netns_path(pod))
    net.delete("ctr", kernel.netns_path(pod))
    assert _no_attachment_rules(plugin_host.ns)


def test_ip_masq_gc_removes_rules_of_gone_containers(plugin_host, netns, data_dir):
    conflist = bridge_conflist(data_dir, ipMasq=True)
    net = plugin_host.network(conflist)
    pods = [netns("pod"), netns("pod")]
    for i, p in enumerate(pods):
        net.add(f"ctr{i}", kernel.netns_path(p))
    net.gc([("ctr0", "eth0")])
    rules = kernel.sh("nft", "list", "table", "inet", "podplumb-ipmasq", ns=plugin_host.ns).stdout
    assert "ctr0/eth0" in rules and "ctr1/eth0" not in rules
    for i, p in enumerate(pods):
        net.delete(f"ctr{i}", kernel.netns_path(p))
    assert _no_attachment_rules(plugin_host.ns)


def test_macspoofchk_drops_frames_with_another_source_mac(plugin_host, netns, data_dir):
    conflist = bridge_conflist(data_dir, subnet6=None, macspoofchk=True)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    net.add("ctr", kernel.netns_path(pod))
    assert kernel.ping(pod, "10.77.0.1")
    net.check("ctr", kernel.netns_path(pod))
    real_mac = kernel.ip_json("link", "show", "eth0", ns=pod)[0]["address"]
    kernel.sh("ip", "neigh", "flush", "all", ns=pod)
    kernel.sh("ip", "link", "set", "eth0", "address", "0a:58:de:ad:be:ef", ns=pod)
    assert not kernel.ping(pod, "10.77.0.1")
    kernel.sh("ip", "link", "set", "eth0", "address", real_mac, ns=pod)
    assert kernel.ping(pod, "10.77.0.1")
    net.delete("ctr", kernel.netns_path(pod))
    assert _no_attachment_rules(plugin_host.ns)


def test_promiscuous_bridge(plugin_host, netns, data_dir):
    conflist = bridge_conflist(data_dir, subnet6=None, promiscMode=True)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    net.add("ctr", kernel.netns_path(pod))
    bridge = kernel.ip_json("link", "show", conflist["plugins"][0]["bridge"], ns=plugin_host.ns)[0]
    assert "PROMISC" in bridge["flags"] and "UP" in bridge["flags"]
    assert kernel.ping(pod, "10.77.0.1")
    net.delete("ctr", kernel.netns_path(pod))


def test_layer2_only_bridge_without_ipam(plugin_host, netns):
    conflist = {"cniVersion": "1.1.0", "name": "l2net", "plugins": [{"type": "bridge", "bridge": kernel.unique("ppl2")}]}
    net = plugin_host.network(conflist)
    pods = [netns("pod"), netns("pod")]
    results = [net.add(f"ctr{i}", kernel.netns_path(p)) for i, p in enumerate(pods)]
    assert all(not r.get("ips") for r in results)
    assert [i["name"] for i in results[0]["interfaces"]][2] == "eth0"
    # The pods share the segment: addresses set by hand reach each other.
    for i, p in enumerate(pods):
        kernel.sh("ip", "addr", "add", f"192.0.2.{i + 1}/24", "dev", "eth0", ns=p)
    assert kernel.ping(pods[0], "192.0.2.2")
    for i, p in enumerate(pods):
        net.check(f"ctr{i}", kernel.netns_path(p))
        net.delete(f"ctr{i}", kernel.netns_path(p))


def test_enabledad_waits_for_duplicate_address_detection(plugin_host, netns, data_dir):
    net = plugin_host.network(bridge_conflist(data_dir, subnet4=None, enabledad=True))
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    addresses = kernel.ip_json("-6", "addr", "show", "eth0", ns=pod)[0]["addr_info"]
    assert not any(a.get("tentative") for a in addresses)
    assert kernel.ping(pod, result["ips"][0]["gateway"])
    net.delete("ctr", kernel.netns_path(pod))


def test_works_with_an_empty_path_environment(plugin_host, netns, data_dir):
    """A runtime may run plugins with a bare environment: nft is still found (it lives in /usr/sbin)."""
    conflist = bridge_conflist(data_dir, ipMasq=True, macspoofchk=True)
    net = plugin_host.network(conflist)
    net.env = {"PATH": ""}
    pod = netns("pod")
    net.add("ctr", kernel.netns_path(pod))
    net.check("ctr", kernel.netns_path(pod))
    net.delete("ctr", kernel.netns_path(pod))
    assert _no_attachment_rules(plugin_host.ns)
