"""Pods made by a bridge chain with meta plugins after it, and what tests read from them."""

import os

from tests import kernel
from tests.conftest import REFERENCE_BIN
from tests.netns.bridge_helpers import bridge_conflist

# The versions the meta plugins' lifecycle tests run in: the oldest result shape, the first with
# CHECK, the newest (the conversions between them are the shared core's, tested with bridge).
VERSIONS = ("0.3.0", "0.4.0", "1.1.0")


def chain(data_dir, *meta, version="1.1.0", **bridge_keys):
    """A conflist: bridge (+ host-local) followed by the `meta` plugin sections."""
    return bridge_conflist(data_dir, version, extra_plugins=meta, **bridge_keys)


def link(ns, ifname="eth0") -> dict:
    return kernel.ip_json("-d", "link", "show", "dev", ifname, ns=ns)[0]


def sysctl(ns, key) -> str:
    return kernel.sh("sysctl", "-n", key, ns=ns).stdout.strip()


def reference_bin(tmp_path, *reference_types, ours=None):
    """A bin dir with the reference executables of `reference_types` and, for every other type,
    ours (from `ours`) or the reference's."""
    path = tmp_path / "mixed-bin"
    path.mkdir(exist_ok=True)
    for name in os.listdir(REFERENCE_BIN):
        source = os.path.join(REFERENCE_BIN, name)
        if ours is not None and name not in reference_types and os.path.exists(os.path.join(ours, name)):
            source = os.path.join(ours, name)
        target = path / name
        if not target.exists():
            target.symlink_to(source)
    return path
