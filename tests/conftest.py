"""Fixtures shared by every test: installed executables, throwaway namespaces."""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from podplumb import client
from podplumb.install import install
from tests import kernel

REFERENCE_BIN = "/usr/lib/cni"


@pytest.fixture(scope="session")
def cni_bin(tmp_path_factory):
    """A CNI bin dir holding our installed executables, as `podplumb install` writes them."""
    bin_dir = tmp_path_factory.mktemp("cni-bin")
    install(str(bin_dir), daemon_socket=None)
    return bin_dir


@pytest.fixture
def netns():
    """Make uniquely named namespaces; all are deleted after the test, whatever happened."""
    made = []

    def make(prefix="pp"):
        name = kernel.unique(prefix + "-", 20)
        kernel.add_netns(name)
        made.append(name)
        return name

    yield make
    for name in reversed(made):
        kernel.del_netns(name)


@pytest.fixture
def host_ns(netns):
    """A namespace playing the host: plugins run inside it, so the real host is never touched."""
    name = netns("pphost")
    kernel.sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=name)
    return name


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "ipam"
    path.mkdir()
    return str(path)


def reference_available() -> bool:
    return os.access(os.path.join(REFERENCE_BIN, "bridge"), os.X_OK)


class PluginHost:
    """Where CNI plugins run in a test: our executables in `bin_dir`, run inside `ns` (the fake host);
    in "daemon" mode they forward each call to `daemon`, a node daemon living in `ns`."""

    def __init__(self, bin_dir, ns, mode, daemon=None):
        self.bin_dir = bin_dir
        self.ns = ns
        self.mode = mode
        self.daemon = daemon

    def network(self, conflist, path=None):
        from podplumb.runtime import Network
        return Network(conflist, self.bin_dir, host_ns=self.ns, path=path)

    def exec(self, plugin_type, command, config, **kw):
        from podplumb.runtime import exec_plugin
        return exec_plugin(self.bin_dir, plugin_type, command, config, host_ns=self.ns, **kw)


class NodeDaemon:
    """`podplumb daemon` run inside the namespace `ns` (it does netlink, nft and sysctl in its own)."""

    START_TIMEOUT = 30
    STOP_TIMEOUT = 15

    def __init__(self, ns: str, socket_path: str, log_path: str, env: dict | None = None, args=()):
        self.ns = ns
        self.socket = socket_path
        self.log_path = log_path
        self.env = env
        self.args = list(args)
        self.proc = None

    def start(self) -> "NodeDaemon":
        podplumb = os.path.join(os.path.dirname(sys.executable), "podplumb")
        with open(self.log_path, "ab") as log:
            # `ip netns exec` execs the command: self.proc.pid is the daemon's pid.
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, podplumb, "daemon", "--socket", self.socket,
                                          "--drain-timeout", "10", *self.args], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node daemon exited {self.proc.returncode}: {self.log()}")
            if os.path.exists(self.socket) and client.forward(
                    self.socket, "plugins.bridge.plugin:PLUGIN", {"CNI_COMMAND": "VERSION"}, b"") is not None:
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"node daemon did not answer on {self.socket} within {self.START_TIMEOUT}s: {self.log()}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after a bound; the exit code (negative: killed by that signal)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self, tail: int | None = 3000) -> str:
        with open(self.log_path, errors="replace") as f:
            text = f.read()
        return text[-tail:] if tail else text


@pytest.fixture
def node_daemon(host_ns, tmp_path):
    """Start node daemons in `host_ns` (sockets under a short private dir); all are killed afterwards."""
    started = []
    socket_dir = tempfile.mkdtemp(prefix="ppd-")     # a unix socket path must stay under 108 bytes

    def start(name="cni", env=None) -> NodeDaemon:
        daemon = NodeDaemon(host_ns, os.path.join(socket_dir, f"{name}.sock"), str(tmp_path / f"{name}.log"), env)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.kill()
    shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture(params=["standalone", "daemon"])
def plugin_host(request, cni_bin, host_ns, node_daemon, tmp_path):
    """Our plugins as a runtime on `host_ns` would call them, in each execution mode."""
    if request.param == "standalone":
        yield PluginHost(cni_bin, host_ns, "standalone")
        return
    daemon = node_daemon()
    bin_dir = tmp_path / "cni-bin"
    install(str(bin_dir), daemon_socket=daemon.socket)
    yield PluginHost(bin_dir, host_ns, "daemon", daemon)
    code = daemon.stop()
    assert code == 0, f"node daemon exited {code} on SIGTERM: {daemon.log()}"
    assert not os.path.exists(daemon.socket), "the node daemon left its socket behind"
