"""host-device against the real kernel: the device is a veth of the fake host whose peer is in a LAN
namespace, so the pod reaching the LAN proves the link works where it was moved."""

import json

import pytest

from podplumb.install import install
from podplumb.runtime import Network, PluginFailed, exec_plugin
from tests import kernel
from tests.conftest import REFERENCE_BIN, reference_available
from tests.netns.bridge_helpers import VERSIONS, host_links, leases
from tests.netns.lan_helpers import make_lan


def device_conflist(data_dir, version="1.1.0", ipam=True, **keys):
    plugin = {"type": "host-device", **keys}
    if ipam:
        plugin["ipam"] = {"type": "host-local", "dataDir": data_dir,
                          "ranges": [[{"subnet": "10.55.0.0/24", "rangeStart": "10.55.0.10"}]],
                          "routes": [{"dst": "10.99.0.0/16", "gw": "10.55.0.1"}]}
    return {"cniVersion": version, "name": kernel.unique("hdnet-", 14), "plugins": [plugin]}


def link(ns, name):
    return kernel.ip_json("-d", "link", "show", name, ns=ns)[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_device_moves_in_renamed_and_back(plugin_host, netns, data_dir, version):
    lan = make_lan(netns, plugin_host.ns)
    mac = link(plugin_host.ns, lan.master)["address"]
    conflist = device_conflist(data_dir, version, device=lan.master)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod), ifname="eth1")

    assert result["interfaces"] == [{"name": "eth1", "mac": mac, "sandbox": kernel.netns_path(pod)}]
    assert result["ips"][0]["address"] == "10.55.0.10/24" and result["ips"][0]["interface"] == 0
    assert lan.master not in host_links(plugin_host.ns)
    moved = link(pod, "eth1")
    assert moved["ifalias"] == lan.master and "UP" in moved["flags"]
    assert kernel.ping(pod, lan.address4)
    if version >= "0.4.0":
        net.check("ctr", kernel.netns_path(pod), ifname="eth1")
    net.delete("ctr", kernel.netns_path(pod), ifname="eth1")
    net.delete("ctr", kernel.netns_path(pod), ifname="eth1")      # DEL twice is success
    assert host_links(pod) == ["lo"]
    back = link(plugin_host.ns, lan.master)
    assert back["address"] == mac
    assert leases(data_dir, conflist["name"]) == []


@pytest.mark.parametrize("selector", ["hwaddr", "kernelpath"])
def test_select_by_hwaddr_or_kernelpath(plugin_host, netns, data_dir, selector):
    lan = make_lan(netns, plugin_host.ns)
    mac = link(plugin_host.ns, lan.master)["address"]
    # sysfs (mounted for the fake host by `ip netns exec`) lists lo and our veth under /sys/devices/virtual/net
    keys = {"hwaddr": mac.upper()} if selector == "hwaddr" else {"kernelpath": "/sys/devices/virtual"}
    net = plugin_host.network(device_conflist(data_dir, ipam=False, **keys))
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    assert result["interfaces"][0]["mac"] == mac and "ips" not in result
    assert link(pod, "eth0")["ifalias"] == lan.master
    net.check("ctr", kernel.netns_path(pod))
    net.delete("ctr", kernel.netns_path(pod))
    assert lan.master in host_links(plugin_host.ns)


def test_del_after_a_daemon_restart_and_by_the_other_mode(cni_bin, node_daemon, host_ns, netns, data_dir, tmp_path):
    """The original name lives on the link: a DEL by a process that never saw the ADD restores it."""
    lan = make_lan(netns, host_ns)
    daemon = node_daemon()
    daemon_bin = tmp_path / "daemon-bin"
    install(str(daemon_bin), daemon_socket=daemon.socket)
    conflist = device_conflist(data_dir, device=lan.master)
    pod = netns("pod")
    Network(conflist, daemon_bin, host_ns=host_ns).add("ctr", kernel.netns_path(pod))
    daemon.kill()
    Network(conflist, cni_bin, host_ns=host_ns).delete("ctr", kernel.netns_path(pod), use_cache=False)
    assert lan.master in host_links(host_ns)
    assert host_links(pod) == ["lo"]
    assert leases(data_dir, conflist["name"]) == []


def test_a_device_in_another_pod_is_refused(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    conflist = device_conflist(data_dir, device=lan.master)
    net = plugin_host.network(conflist)
    first, second = netns("pod"), netns("pod")
    net.add("ctr0", kernel.netns_path(first))
    with pytest.raises(PluginFailed) as failed:
        net.add("ctr1", kernel.netns_path(second))
    assert failed.value.error["code"] == 7 and lan.master in failed.value.error["msg"]
    assert "already" in failed.value.error["details"]
    assert host_links(second) == ["lo"]
    assert kernel.ping(first, lan.address4)
    assert len(leases(data_dir, conflist["name"])) == 1
    net.delete("ctr0", kernel.netns_path(first))


def test_failure_after_the_move_gives_the_device_back(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    kernel.sh("ip", "link", "set", lan.master, "alias", "uplink to the lab", ns=plugin_host.ns)
    conflist = device_conflist(data_dir, device=lan.master)
    conflist["plugins"][0]["ipam"]["routes"] = [{"dst": "10.200.0.0/16", "gw": "192.0.2.1"}]   # not on-link
    net = plugin_host.network(conflist)
    pod = netns("pod")
    with pytest.raises(PluginFailed) as failed:
        net.add("ctr", kernel.netns_path(pod))
    assert "10.200.0.0/16" in failed.value.error["msg"]
    assert host_links(pod) == ["lo"]
    assert link(plugin_host.ns, lan.master)["ifalias"] == "uplink to the lab"
    assert leases(data_dir, conflist["name"]) == []


def test_del_when_the_original_name_is_taken_keeps_the_device_for_a_retry(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    net = plugin_host.network(device_conflist(data_dir, ipam=False, device=lan.master))
    pod = netns("pod")
    net.add("ctr", kernel.netns_path(pod))
    kernel.sh("ip", "link", "add", lan.master, "type", "veth", "peer", "name", kernel.unique("ppx"), ns=plugin_host.ns)
    with pytest.raises(PluginFailed) as failed:
        net.delete("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 103, failed.value.error
    assert "eth0" in host_links(pod)
    kernel.sh("ip", "link", "del", lan.master, ns=plugin_host.ns)
    net.delete("ctr", kernel.netns_path(pod))
    assert link(plugin_host.ns, lan.master)["link_netnsid"] is not None   # the LAN's veth is back


def test_del_leaves_a_link_it_did_not_move(plugin_host, netns, data_dir):
    net = plugin_host.network(device_conflist(data_dir, ipam=False, device="ppnothere0"))
    pod = netns("pod")
    kernel.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0", ns=pod)
    net.delete("ctr", kernel.netns_path(pod))
    assert "eth0" in host_links(pod)


def test_status_and_gc_go_to_ipam(plugin_host, netns, data_dir):
    lan = make_lan(netns, plugin_host.ns)
    conflist = device_conflist(data_dir, device=lan.master)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    net.add("ctr", kernel.netns_path(pod))
    net.status()
    net.gc([])
    assert leases(data_dir, conflist["name"]) == []
    net.delete("ctr", kernel.netns_path(pod))
    assert lan.master in host_links(plugin_host.ns)


BAD = [
    ("nothing-selected", {}, 7, "specify either"),
    ("missing-device", {"device": "ppnosuchdev0"}, 7, "ppnosuchdev0"),
    ("loopback", {"device": "lo"}, 7, "loopback"),
    ("bad-hwaddr", {"hwaddr": "00:11:22:33:44"}, 7, "00:11:22:33:44"),
    ("unknown-hwaddr", {"hwaddr": "0a:00:00:00:00:99"}, 7, "0a:00:00:00:00:99"),
    ("kernelpath-outside-sys", {"kernelpath": "/etc/passwd"}, 7, "/etc/passwd"),
    ("kernelpath-escapes", {"kernelpath": "/sys/devices/../../etc"}, 7, "/sys/devices/../../etc"),
    ("kernelpath-without-links", {"kernelpath": "/sys/devices/system/cpu"}, 7, "/sys/devices/system/cpu"),
    ("bad-pci-address", {"pciBusID": "0000:00:19.0/../x"}, 7, "PCI address"),
    ("absent-pci-device", {"pciBusID": "0000:fe:1f.7"}, 7, "0000:fe:1f.7"),
    ("device-not-a-string", {"device": 5}, 7, "device"),
    ("bad-cidr", {"device": "@LAN", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.55.0.0/33"}]]}},
     7, "10.55.0.0/33"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(cni_bin, netns, host_ns, data_dir, case):
    _, keys, code, text = case
    lan = make_lan(netns, host_ns)
    pod = netns("pod")
    conf = {"cniVersion": "1.0.0", "name": "hdbad", "type": "host-device",
            "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.55.0.0/24"}]]}}
    conf.update({k: (lan.master if v == "@LAN" else v) for k, v in keys.items()})
    run = exec_plugin(cni_bin, "host-device", "ADD", conf, host_ns=host_ns, container_id="ctr",
                      netns=kernel.netns_path(pod), ifname="eth0")
    assert run.code != 0
    error = json.loads(run.stdout)
    assert error["code"] == code, error
    assert text in error["msg"] + error.get("details", ""), error
    assert host_links(pod) == ["lo"]
    assert lan.master in host_links(host_ns)
    assert leases(data_dir, "hdbad") == []


@pytest.mark.skipif(not reference_available(), reason="containernetworking-plugins not installed")
@pytest.mark.parametrize("version", ("0.3.1", "0.4.0", "1.0.0"))
def test_same_results_as_reference_and_each_deletes_the_others_attachment(cni_bin, netns, tmp_path, version):
    outcomes = []
    sides = (("reference", REFERENCE_BIN, cni_bin), ("ours", cni_bin, REFERENCE_BIN))
    for side, add_bin, del_bin in sides:
        host = netns("pphost")
        lan = make_lan(netns, host)
        pod = netns("pod")
        conflist = device_conflist(str(tmp_path / side), version, device=lan.master)
        adder = Network(conflist, add_bin, host_ns=host, path=[str(add_bin)])
        result = adder.add("ctr", kernel.netns_path(pod), ifname="net1")
        if version >= "0.4.0":
            adder.check("ctr", kernel.netns_path(pod), ifname="net1")
        moved = link(pod, "net1")
        view = {"alias": moved["ifalias"] == lan.master, "up": "UP" in moved["flags"],
                "addresses": [f"{a['local']}/{a['prefixlen']}" for a in
                              kernel.ip_json("-4", "addr", "show", "net1", ns=pod)[0]["addr_info"]]}
        # the other implementation's DEL gives the device back
        Network(conflist, del_bin, host_ns=host, path=[str(del_bin)]).delete(
            "ctr", kernel.netns_path(pod), ifname="net1", capability_args=None, use_cache=False)
        view["back"] = lan.master in host_links(host) and host_links(pod) == ["lo"]
        result["interfaces"][0].update(mac="<mac>", sandbox="<netns>")
        outcomes.append({"result": result, "view": view})
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]["view"]["back"]
