"""Helpers for the portmap tests (no tests here): a host namespace with a bridge network (bridge +
host-local + portmap), a client namespace routed to it, echo servers in pods. The real host is
never touched: plugins and nft run inside the test's host namespace."""

import contextlib
import dataclasses
import os
import subprocess
import sys
import time

from podplumb.runtime import Network, exec_plugin
from tests import kernel
from tests.conftest import REFERENCE_BIN
from tests.netns.bridge_helpers import pod_addresses

HOST_EXT = ("192.0.2.1", "2001:db8:e::1")       # host_ns address on the "outside" link
HOST_EXT_OTHER = ("192.0.2.3", "2001:db8:e::3")  # a second host address there (hostIP tests)
CLIENT_EXT = ("192.0.2.2", "2001:db8:e::2")
POD_SUBNETS = ("10.244.7.0/24", "fd00:244:7::/64")
SERVER_PORT = 8000

# Echo server: tcp and udp on [::]:port (both families); answers "<name> <peer address>".
_SERVER = r"""
import select, socket, sys
name, port = sys.argv[1], int(sys.argv[2])
socks = []
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        s.listen(64)
    socks.append(s)
print("ready", flush=True)
while True:
    ready, _, _ = select.select(socks, [], [], 120)
    if not ready:
        break
    for s in ready:
        if s.type == socket.SOCK_STREAM:
            conn, peer = s.accept()
            conn.sendall(f"{name} {peer[0]}".encode())
            conn.close()
        else:
            data, peer = s.recvfrom(100)
            s.sendto(f"{name} {peer[0]}".encode(), peer)
"""

# Client: one tcp connection or one udp datagram; prints the answer, or ERR and the reason.
_CLIENT = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=2)
        print(s.recv(200).decode())
    else:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.connect((host, port))      # connected: an ICMP 'port unreachable' fails fast
        s.send(b"hi")
        print(s.recv(200).decode())
except Exception as e:
    print("ERR", type(e).__name__, e)
"""


def unmap(address: str) -> str:
    return address[7:] if address.startswith("::ffff:") else address


def request(ns: str, proto: str, host: str, port: int) -> tuple[str, str] | None:
    """Send from `ns`; (server name, address the server saw) or None when nothing answered."""
    out = kernel.sh(sys.executable, "-c", _CLIENT, proto, host, str(port), ns=ns, timeout=20).stdout.strip()
    if out.startswith("ERR") or not out:
        return None
    name, seen = out.split()
    return name, unmap(seen)


def settle(*namespaces, timeout: float = 10):
    """Wait until no IPv6 address is tentative (DAD) in these namespaces."""
    deadline = time.monotonic() + timeout
    while any(kernel.sh("ip", "-6", "addr", "show", "tentative", ns=ns).stdout.strip() for ns in namespaces):
        if time.monotonic() > deadline:
            raise AssertionError(f"IPv6 addresses still tentative in {namespaces}")
        time.sleep(0.1)


def bin_dir(tmp_path, cni_bin, main: str = "reference") -> str:
    """A CNI bin dir: bridge and host-local from the reference (or ours), portmap ours."""
    path = tmp_path / f"bin-{main}"
    path.mkdir(exist_ok=True)
    source = REFERENCE_BIN if main == "reference" else str(cni_bin)
    for name in ("bridge", "host-local"):
        os.symlink(os.path.join(source, name), path / name)
    os.symlink(os.path.join(str(cni_bin), "portmap"), path / "portmap")
    return str(path)


def conflist(data_dir: str, bridge: str, name: str = "pmnet", version: str = "1.0.0", hairpin: bool = True,
             **portmap) -> dict:
    return {
        "cniVersion": version,   # the reference bridge of Debian 12 speaks up to 1.0.0
        "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": hairpin,
             "ipam": {"type": "host-local", "dataDir": data_dir,
                      "ranges": [[{"subnet": POD_SUBNETS[0]}], [{"subnet": POD_SUBNETS[1]}]],
                      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}, **portmap},
        ],
    }


def mappings(*entries) -> dict:
    """mappings((8080, 8000), (5353, 8000, "udp"), (9090, 8000, "tcp", "192.0.2.1"))"""
    out = []
    for entry in entries:
        host_port, container_port, *rest = entry
        item = {"hostPort": host_port, "containerPort": container_port, "protocol": rest[0] if rest else "tcp"}
        if len(rest) > 1:
            item["hostIP"] = rest[1]
        out.append(item)
    return {"portMappings": out}


@dataclasses.dataclass
class Pod:
    name: str
    ns: str
    ips: dict           # family -> address (no prefix)


class Env:
    """One host namespace, one client namespace, pods made on demand."""

    def __init__(self, host_ns, make_ns, bin_path, data_dir, **portmap):
        self.host = host_ns
        self.make_ns = make_ns
        self.bridge = kernel.unique("ppbr", 15)
        self.network = Network(conflist(data_dir, self.bridge, **portmap), bin_path, host_ns=host_ns,
                               path=[bin_path])
        self.client = make_ns("ppcli")
        self._servers = []
        self._link_client()

    def _link_client(self):
        host_if = kernel.unique("ppext", 15)
        kernel.sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                  "netns", self.client, ns=self.host)
        kernel.sh("ip", "link", "set", host_if, "up", ns=self.host)
        kernel.sh("ip", "link", "set", "eth0", "up", ns=self.client)
        for ns, dev, (v4, v6) in ((self.host, host_if, HOST_EXT), (self.client, "eth0", CLIENT_EXT)):
            kernel.sh("ip", "addr", "add", f"{v4}/24", "dev", dev, ns=ns)
            kernel.sh("ip", "addr", "add", f"{v6}/64", "dev", dev, "nodad", ns=ns)
        kernel.sh("ip", "addr", "add", f"{HOST_EXT_OTHER[0]}/24", "dev", host_if, ns=self.host)
        kernel.sh("ip", "addr", "add", f"{HOST_EXT_OTHER[1]}/64", "dev", host_if, "nodad", ns=self.host)

    def pod(self, name: str, capability_args=None, serve: bool = True) -> Pod:
        ns = self.make_ns("pppod")
        result = self.network.add(name, kernel.netns_path(ns), capability_args=capability_args)
        pod = Pod(name, ns, pod_addresses(result))   # one address per family: one range each
        settle(self.host, ns)
        if serve:
            self.serve(pod)
        return pod

    def serve(self, pod: Pod, port: int = SERVER_PORT):
        proc = subprocess.Popen(["ip", "netns", "exec", pod.ns, sys.executable, "-c", _SERVER, pod.name, str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._servers.append(proc)
        if proc.stdout.readline().strip() != "ready":
            raise AssertionError(f"echo server in {pod.ns} did not start: {proc.stderr.read()}")

    def delete(self, pod: Pod, **kw):
        self.network.delete(pod.name, kernel.netns_path(pod.ns), **kw)

    def portmap(self, command: str, container_id: str, config: dict, netns: str = "", ifname: str = "eth0"):
        """Run our portmap alone (e.g. for GC and STATUS, which need 1.1.0) inside the host ns."""
        base = {"cniVersion": "1.1.0", "name": self.network.conflist["name"], "type": "portmap"}
        return exec_plugin(self.network.bin_dir, "portmap", command, {**base, **config}, container_id=container_id,
                           netns=netns, ifname=ifname, path=[self.network.bin_dir], host_ns=self.host)

    def ruleset(self) -> str:
        return kernel.sh("nft", "list", "ruleset", ns=self.host).stdout

    def pod_rules_left(self) -> list[str]:
        """Lines of the ruleset that belong to some pod: attachment, host port and route_localnet
        chains and the map elements leading to them (the empty tables stay until a GC)."""
        return [line.strip() for line in self.ruleset().splitlines()
                if any(word in line for word in ("chain pp-", "chain hp-", "chain ln-", "chain guard-",
                                                 "jump pp-", "jump hp-", "jump guard-"))]

    def tagged_rules(self, container_id: str, ifname: str = "eth0") -> list[str]:
        """The lines of our portmap table commented for this container."""
        return [line.strip() for line in self.ruleset().splitlines() if f" {container_id}/{ifname}\"" in line]

    def close(self):
        for proc in self._servers:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def environment(host_ns, make_ns, bin_path, data_dir, **portmap):
    env = Env(host_ns, make_ns, bin_path, data_dir, **portmap)
    try:
        yield env
    finally:
        env.close()
