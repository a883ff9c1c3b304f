"""vxlan with static peers, against the real kernel: hosts are namespaces on an underlay bridge,
each host's plugin runs inside its host namespace, pods are further namespaces."""

import concurrent.futures
import ipaddress
import itertools
import json

import pytest

from plugins.vxlan import vtep
from podplumb.overlay.lab import data_centre, pod_ip
from podplumb.runtime import Network, PluginFailed, exec_plugin
from tests import kernel
from tests.netns.bridge_helpers import leases
from tests.netns.vxlan_helpers import VNI, conflist, link_names, overlay_routes, tcp_transfer, vxlan_plugin

VTEP = f"ppvx.{VNI}"


@pytest.fixture
def network_name():
    return kernel.unique("vxnet-", 14)


def _networks(dc, cni_bin, network_name, **keys) -> list[Network]:
    """One runtime per host, each with the same peer list (which includes the host itself)."""
    return [Network(conflist(network_name, vxlan_plugin(h, peers=dc.hosts, **keys)), cni_bin, host_ns=h.ns)
            for h in dc.hosts]


def test_derived_vtep_mac_is_stable_local_unicast():
    mac = vtep.mac_for("192.168.77.1", 77)
    assert mac == vtep.mac_for("192.168.77.1", 77)
    assert mac != vtep.mac_for("192.168.77.2", 77) and mac != vtep.mac_for("192.168.77.1", 78)
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01


def test_three_hosts_two_pods_each(cni_bin, tmp_path, network_name):
    with data_centre(tmp_path, hosts=3) as dc:
        nets = _networks(dc, cni_bin, network_name)
        pods = []   # (host index, pod namespace, container id, pod IP)
        for (i, net), n in itertools.product(enumerate(nets), range(2)):
            ns, cid = dc.add_pod(), f"ctr-{i}-{n}"
            result = net.add(cid, kernel.netns_path(ns))
            pods.append((i, ns, cid, pod_ip(result)))
            assert ipaddress.ip_address(pod_ip(result)) in ipaddress.ip_network(dc.hosts[i].subnet)

        for host in dc.hosts:
            assert kernel.ip_json("link", "show", VTEP, ns=host.ns)[0]["mtu"] == 1450
        for _, ns, _, _ in pods:
            assert kernel.ip_json("link", "show", "eth0", ns=ns)[0]["mtu"] == 1450

        for (_, a, _, _), (_, _, _, b_ip) in itertools.permutations(pods, 2):
            assert kernel.ping(a, b_ip), f"{a} -> {b_ip}"

        (_, first, _, _), (_, last, _, last_ip) = pods[0], pods[-1]
        assert kernel.ping(first, last_ip, size=1400), "1400-byte DF ping across hosts"
        assert kernel.ping(first, last_ip, size=1422), "a full 1450-byte packet crosses unfragmented"
        assert not kernel.ping(first, last_ip, size=1423), "the pod MTU is the VTEP's"
        sent, received = tcp_transfer(first, last, last_ip)
        assert sent == received

        host1 = dc.hosts[0]
        assert overlay_routes(host1.ns, VTEP) == {"10.77.2.0/24": "10.77.2.0", "10.77.3.0/24": "10.77.3.0"}
        route = kernel.ip_json("-4", "route", "show", "10.77.2.0/24", ns=host1.ns)[0]
        assert "onlink" in route["flags"]
        neighbours = {n["dst"]: (n["lladdr"], n["state"]) for n in kernel.ip_json("-4", "neigh", "show", "dev", VTEP,
                                                                                   ns=host1.ns)}
        assert neighbours == {f"10.77.{h}.0": (vtep.mac_for(f"192.168.77.{h}", VNI), ["PERMANENT"]) for h in (2, 3)}
        assert _fdb(host1.ns) == {(vtep.mac_for(f"192.168.77.{h}", VNI), f"192.168.77.{h}") for h in (2, 3)}

        for i, ns, cid, _ in pods:
            nets[i].check(cid, kernel.netns_path(ns))
        for i, ns, cid, _ in pods:
            nets[i].delete(cid, kernel.netns_path(ns))
            nets[i].delete(cid, kernel.netns_path(ns))
        for net, host in zip(nets, dc.hosts):
            assert VTEP in link_names(host.ns), "DEL leaves the shared VTEP"
            net.gc([])
            assert VTEP not in link_names(host.ns), "GC with no attachment left removes the VTEP"
            assert leases(host.data_dir, network_name) == []


def _fdb(ns: str) -> set:
    out = kernel.sh("bridge", "-j", "fdb", "show", "dev", VTEP, ns=ns).stdout
    return {(e["mac"], e["dst"]) for e in json.loads(out) if e.get("dst")}


def test_peer_list_changes_and_check(cni_bin, tmp_path, network_name):
    with data_centre(tmp_path, hosts=3) as dc:
        host1, host2, _ = dc.hosts
        net = Network(conflist(network_name, vxlan_plugin(host1, peers=dc.hosts)), cni_bin, host_ns=host1.ns)
        pod = dc.add_pod()
        net.add("ctr-a", kernel.netns_path(pod))
        assert set(overlay_routes(host1.ns, VTEP)) == {"10.77.2.0/24", "10.77.3.0/24"}

        kernel.sh("ip", "route", "del", "10.77.3.0/24", ns=host1.ns)
        with pytest.raises(PluginFailed) as failed:
            net.check("ctr-a", kernel.netns_path(pod))
        assert failed.value.error["code"] == 105 and "10.77.3.0/24" in failed.value.error["msg"]

        # The next ADD repairs the entries, and drops those of a host no longer listed.
        fewer = Network(conflist(network_name, vxlan_plugin(host1, peers=[host1, host2])), cni_bin, host_ns=host1.ns)
        fewer.add("ctr-b", kernel.netns_path(dc.add_pod()))
        assert overlay_routes(host1.ns, VTEP) == {"10.77.2.0/24": "10.77.2.0"}
        assert _fdb(host1.ns) == {(vtep.mac_for(host2.underlay_ip, VNI), host2.underlay_ip)}
        assert [n["dst"] for n in kernel.ip_json("-4", "neigh", "show", "dev", VTEP, ns=host1.ns)] == ["10.77.2.0"]

        kernel.sh("ip", "link", "set", VTEP, "mtu", "1300", ns=host1.ns)
        with pytest.raises(PluginFailed) as failed:
            fewer.check("ctr-b", kernel.netns_path(pod))
        assert failed.value.error["code"] == 105 and "MTU 1300" in failed.value.error["msg"]


def test_concurrent_adds_share_one_vtep(cni_bin, tmp_path, network_name):
    with data_centre(tmp_path, hosts=3) as dc:
        host = dc.hosts[0]
        net = Network(conflist(network_name, vxlan_plugin(host, peers=dc.hosts)), cni_bin, host_ns=host.ns)
        pods = [dc.add_pod() for _ in range(6)]
        with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
            results = list(pool.map(lambda p: net.add(f"ctr-{p}", kernel.netns_path(p)), pods))
        assert len({pod_ip(r) for r in results}) == len(pods)
        assert [name for name in link_names(host.ns) if name.startswith("ppvx")] == [VTEP]
        assert set(overlay_routes(host.ns, VTEP)) == {"10.77.2.0/24", "10.77.3.0/24"}
        assert kernel.ping(pods[0], pod_ip(results[-1]))


def test_failed_add_removes_the_vtep_it_created(cni_bin, tmp_path, network_name):
    with data_centre(tmp_path, hosts=1) as dc:
        host = dc.hosts[0]
        plugin = vxlan_plugin(host, peers=[])
        plugin["ipam"] = {"type": "host-local", "dataDir": host.data_dir, "ranges": [[{"subnet": "10.99.0.0/30"}]]}
        net = Network(conflist(network_name, plugin), cni_bin, host_ns=host.ns)
        net.add("ctr-1", kernel.netns_path(dc.add_pod()))   # takes the range's only address
        kernel.sh("ip", "link", "del", VTEP, ns=host.ns)
        with pytest.raises(PluginFailed) as failed:
            net.add("ctr-2", kernel.netns_path(dc.add_pod()))
        assert failed.value.error["code"] == 101
        assert VTEP not in link_names(host.ns)


def test_status(cni_bin, tmp_path, network_name):
    with data_centre(tmp_path, hosts=1) as dc:
        host = dc.hosts[0]
        Network(conflist(network_name, vxlan_plugin(host, peers=[])), cni_bin, host_ns=host.ns).status()
        cluster = Network(conflist(network_name, vxlan_plugin(host, static=False)), cni_bin, host_ns=host.ns)
        with pytest.raises(PluginFailed) as failed:
            cluster.status()
        assert failed.value.error["code"] == 50 and "lease" in failed.value.error["msg"]
        no_route = Network(conflist(network_name, vxlan_plugin(host, peers=[])), cni_bin, host_ns=host.ns)
        kernel.sh("ip", "route", "del", "default", ns=host.ns)
        with pytest.raises(PluginFailed) as failed:
            no_route.status()
        assert failed.value.error["code"] == 50 and "default route" in failed.value.error["msg"]


@pytest.mark.parametrize("keys, message", [
    ({"vni": 0}, "'vni' 0 is out of range"),
    ({"vni": None}, "missing 'vni'"),
    ({"vni": "77"}, "must be an integer"),
    ({"subnet": "10.77.1.5/24"}, "host bits"),
    ({"subnet": "fd00::/64"}, "not an IPv4 subnet"),
    ({"peers": [{"underlayIP": "192.168.77.2", "subnet": "10.77.1.128/25"}]}, "overlaps"),
    ({"subnet": None, "peers": []}, "'peers' needs 'subnet'"),
    ({"underlayIP": "192.168.77.99"}, "not on any link"),
    ({"peers": [{"underlayIP": "192.168.77.1", "subnet": "10.77.9.0/24"}]}, "this host's underlay address"),
])
def test_invalid_config(cni_bin, tmp_path, network_name, keys, message):
    with data_centre(tmp_path, hosts=1) as dc:
        host = dc.hosts[0]
        plugin = {k: v for k, v in {**vxlan_plugin(host, peers=[]), **keys}.items() if v is not None}
        run = exec_plugin(cni_bin, "vxlan", "ADD", dict(plugin, name=network_name, cniVersion="1.1.0"),
                          container_id="ctr", netns=kernel.netns_path(dc.add_pod()), ifname="eth0", host_ns=host.ns)
        error = json.loads(run.stdout)
        assert run.code == 1 and message in error["msg"], error
        assert error["code"] in (7, 50)
        assert VTEP not in link_names(host.ns)
