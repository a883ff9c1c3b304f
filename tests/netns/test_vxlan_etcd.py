"""vxlan in cluster mode: a real etcd, one overlay registry per host (claiming the host's subnet and
programming its peers), the plugin reading the registry's lease file."""

import concurrent.futures
import ipaddress
import json
import os
import signal

import pytest

from podplumb.install import install
from podplumb.overlay import lab, subnets
from podplumb.overlay.etcd import Client
from podplumb.overlay.lab import data_centre, pod_ip
from podplumb.runtime import Network
from tests import kernel
from tests.conftest import NodeDaemon
from tests.netns.vxlan_helpers import (
    VNI,
    EtcdServer,
    RegistryProcess,
    conflist,
    overlay_routes,
    tcp_transfer,
    vxlan_plugin,
    wait_for,
)

VTEP = f"ppvx.{VNI}"
CIDR = "10.88.0.0/16"
TTL = 5


@pytest.fixture(scope="module")
def etcd():
    server = EtcdServer()
    yield server
    server.stop()


@pytest.fixture
def network_name():
    return kernel.unique("vxc-", 12)


@pytest.fixture
def registries():
    started = []
    yield started
    for registry in started:
        registry.stop(signal.SIGKILL)


def _cluster_config(tmp_path, host, network: str, endpoint: str, **cluster) -> str:
    plugin = vxlan_plugin(host, static=False, cluster={"etcdEndpoints": [endpoint], "cidr": CIDR,
                                                       "subnetLength": 24, "prefix": f"/test/{network}", **cluster})
    path = tmp_path / f"{host.ns}.conflist"
    path.write_text(json.dumps(conflist(network, plugin)))
    return str(path)


def test_hosts_join_leave_and_rejoin(cni_bin, tmp_path, etcd, network_name, registries):
    with data_centre(tmp_path, hosts=3) as dc:
        configs = [_cluster_config(tmp_path, h, network_name, etcd.endpoint) for h in dc.hosts]
        for i, (host, path) in enumerate(zip(dc.hosts, configs)):
            registries.append(RegistryProcess(host, path, etcd.endpoint, f"node{i}", TTL).start())
        leases = [r.lease(network_name) for r in registries]   # all three claimed at once
        subnets_held = [lease["subnet"] for lease in leases]
        assert len(set(subnets_held)) == 3
        assert all(ipaddress.ip_network(s).subnet_of(ipaddress.ip_network(CIDR)) for s in subnets_held)
        assert [lease["underlayIP"] for lease in leases] == [h.underlay_ip for h in dc.hosts]

        nets = [Network(json.load(open(path)), cni_bin, host_ns=h.ns) for h, path in zip(dc.hosts, configs)]
        pods = [dc.add_pod() for _ in dc.hosts]
        ips = [pod_ip(net.add("ctr", kernel.netns_path(pod))) for net, pod in zip(nets, pods)]
        for ip, subnet in zip(ips, subnets_held):
            assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)
        for i, host in enumerate(dc.hosts):
            others = {s for j, s in enumerate(subnets_held) if j != i}
            wait_for(lambda: set(overlay_routes(host.ns, VTEP)) == others, timeout=10)
        for a, pod in enumerate(pods):
            for b, ip in enumerate(ips):
                if a != b:
                    assert kernel.ping(pod, ip), f"pod {a} -> pod {b}"
        assert kernel.ping(pods[0], ips[2], size=1422)
        sent, received = tcp_transfer(pods[0], pods[2], ips[2])
        assert sent == received
        nets[0].check("ctr", kernel.netns_path(pods[0]))

        # A host that dies is dropped by the others once its lease expires.
        registries[2].stop(signal.SIGKILL)
        gone = lambda: all(subnets_held[2] not in overlay_routes(h.ns, VTEP) for h in dc.hosts[:2])
        assert wait_for(gone, timeout=TTL + 5) <= TTL + 5
        assert not kernel.ping(pods[0], ips[2])

        # Back again: it claims its remembered subnet, the others route to it again.
        registries[2] = RegistryProcess(dc.hosts[2], configs[2], etcd.endpoint, "node2", TTL).start()
        assert registries[2].lease(network_name)["subnet"] == subnets_held[2]
        wait_for(lambda: subnets_held[2] in overlay_routes(dc.hosts[0].ns, VTEP), timeout=10)
        assert kernel.ping(pods[0], ips[2])

        # A host that stops cleanly revokes its lease: the others drop it at once; restarted
        # within the TTL of a killed registry, a host takes over its own still-registered key.
        registries[1].stop()
        wait_for(lambda: subnets_held[1] not in overlay_routes(dc.hosts[0].ns, VTEP), timeout=3)
        registries[1] = RegistryProcess(dc.hosts[1], configs[1], etcd.endpoint, "node1", TTL).start()
        assert registries[1].lease(network_name)["subnet"] == subnets_held[1]
        registries[1].stop(signal.SIGKILL)
        registries[1] = RegistryProcess(dc.hosts[1], configs[1], etcd.endpoint, "node1", TTL).start()
        assert registries[1].lease(network_name)["subnet"] == subnets_held[1]
        wait_for(lambda: subnets_held[1] in overlay_routes(dc.hosts[0].ns, VTEP), timeout=10)
        assert kernel.ping(pods[0], ips[1])

        for net, pod in zip(nets, pods):
            net.delete("ctr", kernel.netns_path(pod))


def test_simultaneous_claims_get_different_subnets(etcd, network_name):
    client = Client([etcd.endpoint])
    prefix = f"/test/{network_name}/subnets/"
    lease = client.grant(30)

    def claim(n):
        record = subnets.HostRecord(f"node{n}", f"192.168.77.{n + 1}", "02:00:00:00:00:01")
        return subnets.claim(Client([etcd.endpoint]), prefix, record, lease,
                             cidr=ipaddress.ip_network("10.88.0.0/23"), length=26)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(claim, range(8)))
    assert len(set(claimed)) == 8
    with pytest.raises(subnets.ClaimError, match="no free /26"):
        claim(99)
    client.revoke(lease)


def test_configured_subnet_held_by_another_host(tmp_path, etcd, network_name, registries):
    with data_centre(tmp_path, hosts=2) as dc:
        configs = [_cluster_config(tmp_path, h, network_name, etcd.endpoint) for h in dc.hosts]
        first = RegistryProcess(dc.hosts[0], configs[0], etcd.endpoint, "node0", TTL, "--subnet", "10.88.5.0/24")
        registries.append(first.start())
        assert first.lease(network_name)["subnet"] == "10.88.5.0/24"
        second = RegistryProcess(dc.hosts[1], configs[1], etcd.endpoint, "node1", TTL, "--subnet", "10.88.5.0/24")
        registries.append(second.start())
        assert second.proc.wait(20) == 1
        assert "held by node node0" in second.log()


def test_node_daemon_keeps_the_overlay(tmp_path, network_name):
    """`podplumb daemon --overlay-config`, as the DaemonSet runs it: etcd on the underlay, a daemon in
    each host's namespace registering the host and serving its plugin calls."""
    with data_centre(tmp_path, hosts=2) as dc:
        server = EtcdServer(netns=dc.underlay, address=lab.UNDERLAY_ROUTER)
        daemons = []
        try:
            for i, host in enumerate(dc.hosts):
                config = _cluster_config(tmp_path, host, network_name, server.endpoint, ttl=TTL,
                                         dataDir=str(tmp_path / f"registry{i}"))
                daemons.append(NodeDaemon(host.ns, str(tmp_path / f"d{i}.sock"), str(tmp_path / f"d{i}.log"),
                                          env={**os.environ, "NODE_NAME": f"node{i}"},
                                          args=["--overlay-config", config]).start())
            lease_files = [os.path.join(h.state_dir, f"{network_name}.json") for h in dc.hosts]
            wait_for(lambda: all(os.path.exists(f) for f in lease_files), timeout=20)
            subnets_held = [json.load(open(f))["subnet"] for f in lease_files]
            assert len(set(subnets_held)) == 2

            bins = [tmp_path / f"bin{i}" for i in range(2)]
            for bin_dir, daemon in zip(bins, daemons):
                install(str(bin_dir), daemon_socket=daemon.socket)
            nets = [Network(json.load(open(tmp_path / f"{h.ns}.conflist")), b, host_ns=h.ns)
                    for h, b in zip(dc.hosts, bins)]
            pods = [dc.add_pod() for _ in dc.hosts]
            ips = [pod_ip(net.add("ctr", kernel.netns_path(pod))) for net, pod in zip(nets, pods)]
            wait_for(lambda: subnets_held[1] in overlay_routes(dc.hosts[0].ns, VTEP), timeout=10)
            assert kernel.ping(pods[0], ips[1]) and kernel.ping(pods[1], ips[0])
            for daemon in daemons:
                assert "vxlan ADD container=ctr" in daemon.log(), "the plugin call went through the daemon"

            assert daemons[1].stop() == 0     # leaves the cluster: its lease is revoked
            wait_for(lambda: subnets_held[1] not in overlay_routes(dc.hosts[0].ns, VTEP), timeout=TTL + 5)
            nets[0].delete("ctr", kernel.netns_path(pods[0]))
        finally:
            for daemon in daemons:
                daemon.stop()
            server.stop()
