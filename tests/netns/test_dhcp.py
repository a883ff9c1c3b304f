"""dhcp IPAM against a real DHCP server: dnsmasq in a LAN namespace, macvlan pods on the fake host,
the lease service in a node daemon with sockets in a tmp dir. Renewals and releases are read from
dnsmasq's own lease file."""

import json
import os
import shutil
import subprocess
import time

import pytest

from podplumb.install import install
from podplumb.runtime import Network, PluginFailed, exec_plugin
from tests import kernel
from tests.netns.bridge_helpers import host_links
from tests.netns.lan_helpers import make_lan

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
pytestmark = pytest.mark.skipif(not os.access(DNSMASQ, os.X_OK), reason="dnsmasq (dnsmasq-base) not installed")

RENEW_AFTER = 3        # T1 that dnsmasq hands out: the client renews this often


class Dnsmasq:
    """dnsmasq serving DHCP (no DNS) on the LAN namespace's link, with a lease file of its own."""

    def __init__(self, lan, directory):
        self.leasefile = str(directory / "dnsmasq.leases")
        link = kernel.ip_json("link", ns=lan.ns)[-1]["ifname"]
        argv = ["ip", "netns", "exec", lan.ns, DNSMASQ, "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null",
                "--port=0", "--user=root", f"--interface={link}", "--bind-interfaces",
                "--dhcp-range=10.55.0.100,10.55.0.150,255.255.255.0,2m", f"--dhcp-leasefile={self.leasefile}",
                "--dhcp-option=option:router,10.55.0.1", "--dhcp-option=option:dns-server,10.55.0.53",
                f"--dhcp-option=option:T1,{RENEW_AFTER}", f"--dhcp-option=option:T2,{RENEW_AFTER * 4}",
                f"--pid-file={directory / 'dnsmasq.pid'}", "--log-dhcp"]
        self.log = open(directory / "dnsmasq.log", "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

    def leases(self) -> dict:
        """{ip: (expiry, client id)} from dnsmasq's lease file."""
        try:
            with open(self.leasefile) as f:
                lines = [line.split() for line in f if line.strip()]
        except FileNotFoundError:
            return {}
        return {fields[2]: (int(fields[0]), fields[4]) for fields in lines}

    def stop(self):
        kernel.stop(self.proc)
        self.log.close()


@pytest.fixture
def dhcp_lan(netns, host_ns, tmp_path):
    lan = make_lan(netns, host_ns)
    server = Dnsmasq(lan, tmp_path)
    yield lan, server
    server.stop()


@pytest.fixture
def lease_daemon(node_daemon, tmp_path):
    """A node daemon whose DHCP lease service listens beside its CNI socket; executables installed for it."""
    daemon = node_daemon()
    dhcp_socket = daemon.socket[:-len(".sock")] + "-dhcp.sock"
    deadline = time.monotonic() + 10
    while not os.path.exists(dhcp_socket) and time.monotonic() < deadline:
        time.sleep(0.05)
    bin_dir = tmp_path / "cni-bin"
    install(str(bin_dir), daemon_socket=daemon.socket)
    return daemon, dhcp_socket, bin_dir


def conflist(lan, dhcp_socket, version="1.1.0"):
    return {"cniVersion": version, "name": kernel.unique("dhnet-", 14), "plugins": [
        {"type": "macvlan", "master": lan.master, "ipam": {"type": "dhcp", "daemonSocketPath": dhcp_socket}}]}


def client_id(container_id, network, ifname="eth0"):
    """The client identifier dnsmasq records: type 0, then the reference's ID string, in hex."""
    raw = b"\x00" + f"{container_id}/{network}/{ifname}".encode()
    return ":".join(f"{b:02x}" for b in raw)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_lease_acquired_renewed_and_released(dhcp_lan, lease_daemon, host_ns, netns, version):
    lan, server = dhcp_lan
    daemon, dhcp_socket, bin_dir = lease_daemon
    net = Network(conflist(lan, dhcp_socket, version), bin_dir, host_ns=host_ns)
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))

    address = result["ips"][0]["address"]
    ip = address.split("/")[0]
    assert address.endswith("/24") and 100 <= int(ip.split(".")[-1]) <= 150
    assert result["ips"][0]["gateway"] == "10.55.0.1"
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.55.0.1"}]
    assert result["dns"] == {"nameservers": ["10.55.0.53"]}
    assert kernel.ping(pod, lan.address4)
    assert kernel.ping(lan.ns, ip)
    granted = server.leases()
    assert granted[ip][1] == client_id("ctr", net.conflist["name"])
    if version >= "0.4.0":
        net.check("ctr", kernel.netns_path(pod))
    # the same attachment asked again gets the same lease
    again = exec_plugin(bin_dir, "dhcp", "ADD", net.config(net.conflist["plugins"][0]), container_id="ctr",
                        netns=kernel.netns_path(pod), ifname="eth0", host_ns=host_ns)
    assert again.code == 0 and again.json["ips"][0]["address"] == address

    if version == "1.1.0":   # renewal: dnsmasq moves the lease's expiry forward
        first_expiry = granted[ip][0]
        wait_for(lambda: server.leases().get(ip, (0,))[0] > first_expiry, RENEW_AFTER * 3, "a renewal")

    net.delete("ctr", kernel.netns_path(pod))
    wait_for(lambda: ip not in server.leases(), 5, "the release")
    net.delete("ctr", kernel.netns_path(pod))      # DEL twice is success
    assert host_links(pod) == ["lo"]


def test_two_pods_get_different_leases_and_gc_releases_the_stale_one(dhcp_lan, lease_daemon, host_ns, netns):
    lan, server = dhcp_lan
    _, dhcp_socket, bin_dir = lease_daemon
    net = Network(conflist(lan, dhcp_socket), bin_dir, host_ns=host_ns)
    pods = [netns("pod"), netns("pod")]
    results = [net.add(f"ctr{i}", kernel.netns_path(p)) for i, p in enumerate(pods)]
    ips = [r["ips"][0]["address"].split("/")[0] for r in results]
    assert ips[0] != ips[1] and set(ips) <= set(server.leases())
    assert kernel.ping(pods[0], ips[1])
    net.status()
    net.gc([("ctr0", "eth0")])
    wait_for(lambda: ips[1] not in server.leases(), 5, "the release of the stale lease")
    assert ips[0] in server.leases()
    for i, p in enumerate(pods):
        net.delete(f"ctr{i}", kernel.netns_path(p))
    wait_for(lambda: not server.leases(), 5, "every release")


def test_no_lease_service_is_code_11_saying_how_to_start_one(cni_bin, dhcp_lan, host_ns, netns, tmp_path):
    lan, _ = dhcp_lan
    missing = str(tmp_path / "nobody-dhcp.sock")
    net = Network(conflist(lan, missing), cni_bin, host_ns=host_ns)
    pod = netns("pod")
    with pytest.raises(PluginFailed) as failed:
        net.add("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 11
    assert missing in failed.value.error["msg"] and "podplumb daemon" in failed.value.error["details"]
    assert host_links(pod) == ["lo"]      # macvlan rolled its link back
    with pytest.raises(PluginFailed) as failed:
        net.status()
    assert failed.value.error["code"] == 50
    net.delete("ctr", kernel.netns_path(pod))     # nothing to release: success


def test_no_dhcp_server_fails_and_leaves_nothing(lease_daemon, host_ns, netns):
    lan = make_lan(netns, host_ns)          # no dnsmasq on this one
    _, dhcp_socket, bin_dir = lease_daemon
    net = Network(conflist(lan, dhcp_socket), bin_dir, host_ns=host_ns)
    pod = netns("pod")
    started = time.monotonic()
    with pytest.raises(PluginFailed) as failed:
        net.add("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 11 and "no DHCP lease" in failed.value.error["msg"]
    assert time.monotonic() - started < 40
    assert host_links(pod) == ["lo"]


def test_daemon_stop_keeps_the_servers_lease(dhcp_lan, lease_daemon, host_ns, netns):
    lan, server = dhcp_lan
    daemon, dhcp_socket, bin_dir = lease_daemon
    net = Network(conflist(lan, dhcp_socket), bin_dir, host_ns=host_ns)
    pod = netns("pod")
    ip = net.add("ctr", kernel.netns_path(pod))["ips"][0]["address"].split("/")[0]
    assert daemon.stop() == 0
    assert not os.path.exists(dhcp_socket)
    assert ip in server.leases()          # no release on a daemon restart: the pod keeps its address
    assert kernel.ping(pod, lan.address4)


def test_example_config(dhcp_lan, lease_daemon, host_ns, netns):
    """conf/cni/dhcp/ holds the example (apart from conf/cni/: it needs a DHCP server and the daemon)."""
    lan, server = dhcp_lan
    _, _, bin_dir = lease_daemon
    path = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "cni", "dhcp", "41-podplumb-macvlan-dhcp.conflist")
    with open(path) as f:
        example = json.load(f)
    example["plugins"][0]["master"] = lan.master
    # No daemonSocketPath: the executables, installed for the daemon, find its lease service beside it.
    net = Network(example, bin_dir, host_ns=host_ns)
    pod = netns("pod")
    ip = net.add("ctr", kernel.netns_path(pod))["ips"][0]["address"].split("/")[0]
    assert ip in server.leases()
    net.check("ctr", kernel.netns_path(pod))
    net.delete("ctr", kernel.netns_path(pod))
    wait_for(lambda: ip not in server.leases(), 5, "the release")


def test_python_launcher_without_a_daemon_names_the_install_time_lease_socket(dhcp_lan, host_ns, netns, tmp_path):
    lan, _ = dhcp_lan
    bin_dir = tmp_path / "bin"
    daemon_socket = str(tmp_path / "gone" / "cni.sock")
    install(str(bin_dir), daemon_socket=daemon_socket, native=False)
    conf = conflist(lan, "unused")
    del conf["plugins"][0]["ipam"]["daemonSocketPath"]
    with pytest.raises(PluginFailed) as failed:
        Network(conf, bin_dir, host_ns=host_ns).add("ctr", kernel.netns_path(netns("pod")))
    assert failed.value.error["code"] == 11
    assert str(tmp_path / "gone" / "cni-dhcp.sock") in failed.value.error["msg"]
