"""Fixtures shared by every test: installed executables, throwaway namespaces."""

import os
import shutil
import tempfile

import pytest

from podplumb.install import install
from podplumb.runtime import DaemonProcess as NodeDaemon, Network, exec_plugin   # tests import NodeDaemon from here
from tests import kernel

REFERENCE_BIN = "/usr/lib/cni"


def pytest_configure(config):
    """Give each run its own temporary root unless one is named.

    pytest's shared /tmp/pytest-of-<user> is pruned by every run, so two runs at
    once (two developers' worktrees, say) would delete each other's files.
    """
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="podplumb-pytest-")
        config._podplumb_basetemp = config.option.basetemp
    # Attachment records (cni.records) of every plugin the tests run, never the machine's.
    if "PODPLUMB_STATE_DIR" not in os.environ:
        os.environ["PODPLUMB_STATE_DIR"] = config._podplumb_records = tempfile.mkdtemp(prefix="podplumb-records-")


def pytest_unconfigure(config):
    for made in (getattr(config, "_podplumb_basetemp", None), getattr(config, "_podplumb_records", None)):
        if made:
            shutil.rmtree(made, ignore_errors=True)


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
    installed for the daemon, they forward each call to a node daemon living in `ns`."""

    def __init__(self, bin_dir, ns):
        self.bin_dir = bin_dir
        self.ns = ns

    def network(self, conflist, path=None):
        return Network(conflist, self.bin_dir, host_ns=self.ns, path=path)

    def exec(self, plugin_type, command, config, **kw):
        return exec_plugin(self.bin_dir, plugin_type, command, config, host_ns=self.ns, **kw)


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
        yield PluginHost(cni_bin, host_ns)
        return
    daemon = node_daemon()
    bin_dir = tmp_path / "cni-bin"
    install(str(bin_dir), daemon_socket=daemon.socket)
    yield PluginHost(bin_dir, host_ns)
    code = daemon.stop()
    assert code == 0, f"node daemon exited {code} on SIGTERM: {daemon.log()}"
    assert not os.path.exists(daemon.socket), "the node daemon left its socket behind"
