"""Fixtures shared by every test: installed executables, throwaway namespaces."""

import os

import pytest

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
