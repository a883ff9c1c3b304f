"""macvlan against the real kernel: the master is a veth into a LAN namespace, on a fake host."""

import json

import pytest

from podplumb.runtime import PluginFailed
from tests import kernel
from tests.netns.bridge_helpers import (VERSIONS, add_pods, check_then_delete_twice, host_links, leases,
                                         pod_addresses)
from tests.netns.lan_helpers import make_lan


def macvlan_conflist(data_dir, master=None, version="1.1.0", ipam=True, subnet6=True, **keys):
    plugin = {"type": "macvlan", **({"master": master} if master else {}), **keys}
    if ipam:
        ranges = [[{"subnet": "10.55.0.0/24", "rangeStart": "10.55.0.10", "rangeEnd": "10.55.0.50"}]]
        if subnet6:
            ranges.append([{"subnet": "fd55::/64", "rangeStart": "fd55::10", "rangeEnd": "fd55::50"}])
        plugin["ipam"] = {"type": "host-local", "dataDir": data_dir, "ranges": ranges,
                          "routes": [{"dst": "10.99.0.0/16", "gw": "10.55.0.1"}]}
    return {"cniVersion": version, "name": kernel.unique("mvnet-", 14), "plugins": [plugin]}


def link_details(ns, name):
    return kernel.ip_json("-d", "link", "show", name, ns=ns)[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_two_pods_reach_each_other_and_the_lan(plugin_host, netns, data_dir, version):
    lan = make_lan(netns, plugin_host.ns)
    conflist = macvlan_conflist(data_dir, lan.master, version, subnet6=version == "1.1.0")
    net = plugin_host.network(conflist)
    pods, results = add_pods(net, netns)

    for pod, result in zip(pods, results):
        assert result["cniVersion"] == version
        assert result["interfaces"] == [{"name": "eth0", "mac": link_details(pod, "eth0")["address"],
                                         "sandbox": kernel.netns_path(pod)}]
        assert all(ip["interface"] == 0 for ip in result["ips"])
        assert result["routes"] == [{"dst": "10.99.0.0/16", "gw": "10.55.0.1"}]
        info = link_details(pod, "eth0")["linkinfo"]
        assert info["info_kind"] == "macvlan" and info["info_data"]["mode"] == "bridge"
        assert kernel.sh("sysctl", "-n", "net.ipv4.conf.eth0.arp_notify", ns=pod).stdout.strip() == "1"
    a, b = (pod_addresses(r) for r in results)
    assert kernel.ping(pods[0], b[4]), "pod to pod"
    assert kernel.ping(pods[1], lan.address4), "pod to LAN"
    assert kernel.ping(lan.ns, a[4]), "LAN to pod"
    if version == "1.1.0":
        assert kernel.ping(pods[0], lan.address6) and kernel.ping(pods[0], b[6]), "over IPv6"
    check_then_delete_twice(net, pods, version)
    for p in pods:
        assert host_links(p) == ["lo"]
    assert leases(data_dir, conflist["name"]) == []
    assert lan.master in host_links(plugin_host.ns)


def test_layer2_only_without_ipam(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    net = plugin_host.network(macvlan_conflist(data_dir, lan.master, ipam=False))
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    assert "ips" not in result and "routes" not in result
    link = link_details(pod, "eth0")
    assert "UP" in link["flags"]
    assert kernel.ip_json("-4", "addr", "show", "eth0", ns=pod) == []
    # layer 2 works: an address set by hand reaches the LAN
    kernel.sh("ip", "addr", "add", "10.55.0.77/24", "dev", "eth0", ns=pod)
    assert kernel.ping(pod, lan.address4)
    net.check("ctr", kernel.netns_path(pod))
    net.delete("ctr", kernel.netns_path(pod))
    assert host_links(pod) == ["lo"]


def test_master_defaults_to_the_default_route_link(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns, default_route=True)
    net = plugin_host.network(macvlan_conflist(data_dir, subnet6=False))
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    assert link_details(pod, "eth0")["link_index"] == link_details(plugin_host.ns, lan.master)["ifindex"]
    assert kernel.ping(pod, lan.address4)
    net.check("ctr", kernel.netns_path(pod))
    net.delete("ctr", kernel.netns_path(pod))
    assert result["ips"]


def test_no_master_and_no_default_route_is_a_config_error(plugin_host, netns, data_dir):
    net = plugin_host.network(macvlan_conflist(data_dir))
    pod = netns("pod")
    with pytest.raises(PluginFailed) as failed:
        net.add("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 7 and "default route" in failed.value.error["msg"]
    assert host_links(pod) == ["lo"]


def test_link_in_container(plugin_host, netns, data_dir):
    pod = netns("pod")
    lan = make_lan(netns, pod)       # the master is the pod's own link
    net = plugin_host.network(macvlan_conflist(data_dir, lan.master, linkInContainer=True, subnet6=False))
    result = net.add("ctr", kernel.netns_path(pod), ifname="net1")
    assert result["interfaces"][0]["name"] == "net1"
    assert link_details(pod, "net1")["link"] == lan.master
    assert kernel.ping(pod, lan.address4)
    net.check("ctr", kernel.netns_path(pod), ifname="net1")
    net.delete("ctr", kernel.netns_path(pod), ifname="net1")
    assert sorted(host_links(pod)) == sorted(["lo", lan.master])


def test_modes_mtu_and_mac(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    kernel.sh("ip", "link", "set", lan.master, "mtu", "1400", ns=plugin_host.ns)
    net = plugin_host.network(macvlan_conflist(data_dir, lan.master, mode="private", mtu=1300, subnet6=False,
                                               capabilities={"mac": True}))
    pods = [netns("pod"), netns("pod")]
    results = [net.add("ctr0", kernel.netns_path(pods[0]), capability_args={"mac": "0a:55:00:00:00:01"}),
               net.add("ctr1", kernel.netns_path(pods[1]), cni_args="IgnoreUnknown=1;MAC=0a:55:00:00:00:02")]
    for i, (pod, result) in enumerate(zip(pods, results)):
        link = link_details(pod, "eth0")
        assert link["mtu"] == 1300 and link["linkinfo"]["info_data"]["mode"] == "private"
        assert link["address"] == result["interfaces"][0]["mac"] == f"0a:55:00:00:00:0{i + 1}"
    # private: no traffic between the pods, the LAN still reachable
    assert kernel.ping(pods[0], lan.address4)
    assert not kernel.ping(pods[0], pod_addresses(results[1])[4])
    for i, p in enumerate(pods):
        net.delete(f"ctr{i}", kernel.netns_path(p))


def test_source_and_vepa_modes_as_asked(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    for mode in ("source", "vepa"):
        net = plugin_host.network(macvlan_conflist(data_dir, lan.master, ipam=False, mode=mode))
        pod = netns("pod")
        net.add("ctr", kernel.netns_path(pod))
        assert link_details(pod, "eth0")["linkinfo"]["info_data"]["mode"] == mode
        net.check("ctr", kernel.netns_path(pod))
        net.delete("ctr", kernel.netns_path(pod))
        assert host_links(pod) == ["lo"]


def test_passthru_takes_the_master_alone(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    net = plugin_host.network(macvlan_conflist(data_dir, lan.master, mode="passthru", subnet6=False))
    pods = [netns("pod"), netns("pod")]
    net.add("ctr0", kernel.netns_path(pods[0]))
    assert kernel.ping(pods[0], lan.address4)
    with pytest.raises(PluginFailed) as failed:
        net.add("ctr1", kernel.netns_path(pods[1]))
    assert failed.value.error["code"] == 106
    assert host_links(pods[1]) == ["lo"]
    assert len(leases(data_dir, net.conflist["name"])) == 1      # the second's lease never taken
    net.delete("ctr0", kernel.netns_path(pods[0]))


def test_failure_after_ipam_leaves_nothing(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    conflist = macvlan_conflist(data_dir, lan.master, subnet6=False)
    conflist["plugins"][0]["ipam"]["routes"] = [{"dst": "10.200.0.0/16", "gw": "192.0.2.1"}]   # not on-link
    net = plugin_host.network(conflist)
    pod = netns("pod")
    with pytest.raises(PluginFailed) as failed:
        net.add("ctr", kernel.netns_path(pod))
    assert "10.200.0.0/16" in failed.value.error["msg"]
    assert host_links(pod) == ["lo"]
    assert leases(data_dir, conflist["name"]) == []


def test_duplicate_ipv6_address_on_the_lan_fails_and_leaves_nothing(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    lan_link = kernel.ip_json("link", ns=lan.ns)[-1]["ifname"]
    kernel.sh("ip", "addr", "add", "fd55::10/64", "dev", lan_link, "nodad", ns=lan.ns)   # the first address IPAM gives
    conflist = macvlan_conflist(data_dir, lan.master)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    with pytest.raises(PluginFailed) as failed:
        net.add("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 106 and "fd55::10" in failed.value.error["msg"]
    assert host_links(pod) == ["lo"]
    assert leases(data_dir, conflist["name"]) == []


def test_check_finds_differences(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    net = plugin_host.network(macvlan_conflist(data_dir, lan.master, subnet6=False))
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    net.check("ctr", kernel.netns_path(pod))

    kernel.sh("ip", "link", "set", "eth0", "type", "macvlan", "mode", "vepa", ns=pod)
    with pytest.raises(PluginFailed) as failed:
        net.check("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 105 and "vepa" in failed.value.error["msg"]
    kernel.sh("ip", "link", "set", "eth0", "type", "macvlan", "mode", "bridge", ns=pod)

    address = result["ips"][0]["address"]
    kernel.sh("ip", "addr", "del", address, "dev", "eth0", ns=pod)
    with pytest.raises(PluginFailed) as failed:
        net.check("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 105 and address in failed.value.error["msg"]
    net.delete("ctr", kernel.netns_path(pod))


def test_del_leaves_a_non_macvlan_link_alone_and_tolerates_a_gone_namespace(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    conflist = macvlan_conflist(data_dir, lan.master, subnet6=False)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    kernel.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0", ns=pod)
    net.delete("ctr", kernel.netns_path(pod))
    assert "eth0" in host_links(pod)
    gone = netns("pod")
    net.add("ctr2", kernel.netns_path(gone))
    kernel.del_netns(gone)
    net.delete("ctr2", kernel.netns_path(gone))
    net.delete("ctr2", "")
    assert leases(data_dir, conflist["name"]) == []


def test_status_and_gc_go_to_ipam(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    conflist = macvlan_conflist(data_dir, lan.master, subnet6=False)
    net = plugin_host.network(conflist)
    pods = [netns("pod"), netns("pod")]
    for i, p in enumerate(pods):
        net.add(f"ctr{i}", kernel.netns_path(p))
    net.status()
    net.gc([("ctr0", "eth0")])
    assert len(leases(data_dir, conflist["name"])) == 1
    net.delete("ctr0", kernel.netns_path(pods[0]))


BAD = [
    ("missing-master", {"master": "ppnosuchlink0"}, {}, 7, "ppnosuchlink0"),
    ("bad-mode", {"mode": "sideways"}, {}, 7, "sideways"),
    ("mtu-above-master", {"mtu": 9000}, {}, 7, "MTU 9000"),
    ("mtu-wrong-type", {"mtu": "1500"}, {}, 7, "mtu"),
    ("master-not-a-name", {"master": "a/b"}, {}, 7, "a/b"),
    ("link-in-container-not-bool", {"linkInContainer": "yes"}, {}, 7, "linkInContainer"),
    ("invalid-mac", {}, {"CNI_ARGS": "MAC=zz:00:00:00:00:01"}, 7, "zz:00:00:00:00:01"),
    ("multicast-mac", {"mac": "01:00:5e:00:00:01"}, {}, 7, "multicast"),
    ("bad-cidr", {"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.55.0.0/33"}]]}}, {}, 7, "10.55.0.0/33"),
    ("unknown-ipam", {"ipam": {"type": "no-such-ipam"}}, {}, 7, "no-such-ipam"),
    ("missing-netns", {}, {"CNI_NETNS": "/run/netns/pp-no-such-ns"}, 3, "pp-no-such-ns"),
    ("not-json", b"{", {}, 6, "JSON"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(cni_bin, netns, host_ns, data_dir, case):
    _, changes, env, code, text = case
    lan = make_lan(netns, host_ns)
    pod = netns("pod")
    if isinstance(changes, bytes):
        stdin = changes
    else:
        conf = {"cniVersion": "1.0.0", "name": "mvbad", "type": "macvlan", "master": lan.master,
                "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.55.0.0/24"}]]}}
        conf.update(changes)
        stdin = json.dumps(conf).encode()
    call = {"container_id": "ctr", "netns": kernel.netns_path(pod), "ifname": "eth0"}
    call.update({k.removeprefix("CNI_").lower().replace("containerid", "container_id").replace("args", "cni_args"): v
                 for k, v in env.items()})
    run = plugin_run(cni_bin, host_ns, stdin, **call)
    assert run.code != 0
    error = json.loads(run.stdout)
    assert error["code"] == code, error
    assert text in error["msg"] + error.get("details", ""), error
    assert host_links(pod) == ["lo"]
    assert sorted(host_links(host_ns)) == sorted(["lo", lan.master])
    assert leases(data_dir, "mvbad") == []


def test_interface_name_taken_in_the_pod(cni_bin, netns, host_ns, data_dir):
    lan = make_lan(netns, host_ns)
    pod = netns("pod")
    kernel.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0", ns=pod)
    conf = macvlan_conflist(data_dir, lan.master)
    stdin = json.dumps(dict(conf["plugins"][0], name=conf["name"], cniVersion="1.0.0")).encode()
    run = plugin_run(cni_bin, host_ns, stdin, container_id="ctr", netns=kernel.netns_path(pod), ifname="eth0")
    assert json.loads(run.stdout)["code"] == 103
    assert leases(data_dir, conf["name"]) == []


def plugin_run(cni_bin, host_ns, stdin, **call):
    from podplumb.runtime import exec_plugin
    return exec_plugin(cni_bin, "macvlan", "ADD", stdin, host_ns=host_ns, **call)
