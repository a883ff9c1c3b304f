"""Helpers of the vxlan tests: the namespace data centre (podplumb.overlay.lab), configs, a TCP
transfer between two pods, a throwaway etcd and overlay registry processes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from podplumb.overlay import lab
from podplumb.overlay.lab import Host
from tests import kernel

VNI = 77


def vxlan_plugin(host: Host, *, static: bool = True, peers=(), **keys) -> dict:
    """The vxlan section of a host's conflist: static (`peers`: Host objects, may include `host`)
    or cluster mode (no subnet, no peers)."""
    plugin = lab.static_plugin(host, peers, VNI)
    if not static:
        del plugin["subnet"], plugin["peers"]
    plugin.update(keys)
    return plugin


def conflist(network: str, plugin: dict, version: str = "1.1.0") -> dict:
    return {"cniVersion": version, "name": network, "plugins": [plugin]}


def link_names(ns: str) -> list[str]:
    return [link["ifname"] for link in kernel.ip_json("link", "show", ns=ns)]


def overlay_routes(ns: str, vtep: str) -> dict:
    """{subnet: gateway} of the routes through the VTEP."""
    return {r["dst"]: r.get("gateway") for r in kernel.ip_json("-4", "route", "show", "dev", vtep, ns=ns)}


_RECEIVER = """
import hashlib, socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
server.settimeout(float(sys.argv[2]))
print("listening", flush=True)
conn, _ = server.accept()
conn.settimeout(float(sys.argv[2]))
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(65536):
    digest.update(chunk)
    total += len(chunk)
print(total, digest.hexdigest(), flush=True)
"""

_SENDER = """
import hashlib, socket, sys, time
size, deadline = int(sys.argv[3]), time.monotonic() + float(sys.argv[4])
payload = hashlib.sha256(b"podplumb").digest() * (size // 32)
while True:
    try:
        conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
conn.settimeout(float(sys.argv[4]))
conn.sendall(payload)
conn.close()
print(len(payload), hashlib.sha256(payload).hexdigest(), flush=True)
"""


def tcp_transfer(sender_ns: str, receiver_ns: str, receiver_ip: str, size: int = 8 * 2 ** 20,
                 port: int = 5201, timeout: float = 30) -> tuple[str, str]:
    """Send `size` bytes from one pod to another; (what was sent, what arrived) as 'bytes sha256'."""
    receiver = subprocess.Popen(["ip", "netns", "exec", receiver_ns, sys.executable, "-c", _RECEIVER,
                                 str(port), str(timeout)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "listening", receiver.stderr.read()
        sent = kernel.sh(sys.executable, "-c", _SENDER, receiver_ip, str(port), str(size), str(timeout),
                         ns=sender_ns, timeout=timeout + 5).stdout.strip()
        received, errors = receiver.communicate(timeout=timeout + 5)
        assert receiver.returncode == 0, errors
        return sent, received.strip()
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    """A throwaway single-member etcd (Debian's etcd-server), data in a temp dir: on 127.0.0.1, or
    inside namespace `netns` on `address` (as a cluster's etcd on the underlay)."""

    BINARY = "/usr/bin/etcd"

    def __init__(self, netns: str | None = None, address: str = "127.0.0.1"):
        self.dir = tempfile.mkdtemp(prefix="pp-etcd-")
        client, peer = free_port(), free_port()
        self.endpoint = f"http://{address}:{client}"
        self.log = open(os.path.join(self.dir, "etcd.log"), "wb")
        inside = ["ip", "netns", "exec", netns] if netns else []
        self.proc = subprocess.Popen(
            [*inside, self.BINARY, "--name", "pp", "--data-dir", os.path.join(self.dir, "data"),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", f"http://{address}:{peer}", "--initial-advertise-peer-urls",
             f"http://{address}:{peer}", "--initial-cluster", f"pp=http://{address}:{peer}"],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        probe = [*inside, sys.executable, "-c", "import sys, urllib.request; "
                 "urllib.request.urlopen(sys.argv[1] + '/version', timeout=1)", self.endpoint]
        deadline = time.monotonic() + 20
        while subprocess.run(probe, capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("etcd did not start")
            time.sleep(0.1)

    def stop(self):
        kernel.stop(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class RegistryProcess:
    """`python -m podplumb.overlay` for one host, run here and programming the host's namespace."""

    def __init__(self, host: Host, network_config: str, endpoint: str, node: str, ttl: int, *extra: str):
        self.host = host
        self.node = node
        self.argv = [sys.executable, "-m", "podplumb.overlay", "--network-config", network_config,
                     "--etcd-endpoints", endpoint, "--node-name", node, "--netns", host.path, "--ttl", str(ttl),
                     "--data-dir", os.path.join(host.state_dir, "..", "registry"), *extra]
        self.log_path = os.path.join(host.state_dir, "..", f"registry-{node}.log")
        self.proc = None

    def start(self) -> "RegistryProcess":
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        return self

    def lease(self, network: str, timeout: float = 20) -> dict:
        """The lease file once the registry wrote it."""
        path = os.path.join(self.host.state_dir, f"{network}.json")
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"registry {self.node} wrote no lease: {self.log()}")
            time.sleep(0.05)
        with open(path) as f:
            return json.load(f)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]


def wait_for(predicate, timeout: float, interval: float = 0.2) -> float:
    """Seconds until `predicate()` held; AssertionError after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - start
