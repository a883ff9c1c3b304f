"""The driver as a process: command line, socket file, signals
(docs/csi-contract.md, "Command line")."""

import os
import socket
import stat
import subprocess
import sys

from .conftest import REPO, Driver, dispose_root, new_root, pb


def test_sigterm_exits_zero_and_removes_socket():
    root = new_root()
    drv = Driver(root).start()
    try:
        assert stat.S_IMODE(os.stat(drv.socket).st_mode) == 0o600
        drv.stop()
        assert drv.proc.returncode == 0
        assert not drv.socket.exists()
    finally:
        assert not dispose_root(root, drv)


def test_stale_socket_file_is_replaced():
    """A socket file left by a driver that died (nobody listening) is replaced."""
    root = new_root()
    drv = Driver(root)
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(drv.socket))
    leftover.close()
    try:
        drv.start()
        assert drv.identity.Probe(pb.ProbeRequest()).ready.value
    finally:
        assert not dispose_root(root, drv)


def test_max_volumes_and_name_flags():
    root = new_root()
    drv = Driver(root, node_id="node-flags", extra_args=["--max-volumes", "7",
                                                         "--name", "podplumb.csi.io"])
    try:
        drv.start()
        info = drv.node.NodeGetInfo(pb.NodeGetInfoRequest())
        assert info.max_volumes_per_node == 7 and info.node_id == "node-flags"
        assert drv.identity.GetPluginInfo(pb.GetPluginInfoRequest()).name == "podplumb.csi.io"
    finally:
        assert not dispose_root(root, drv)


def test_bad_command_line_exits_2():
    for argv in (["--endpoint", "tcp://127.0.0.1:1"], ["--capacity", "lots"], ["--frobnicate"]):
        proc = subprocess.run([sys.executable, "-m", "csi.server", "--node-id", "n",
                               "--state-dir", "/nonexistent-ppcsi", *argv],
                              cwd=REPO, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, (argv, proc.returncode, proc.stderr[-500:])
    assert not os.path.exists("/nonexistent-ppcsi")


def test_podplumb_csi_entry_point_serves():
    """`podplumb csi ...` (what the DaemonSet runs) starts the same driver."""
    root = new_root()
    drv = Driver(root)
    env = dict(os.environ)
    try:
        drv.state_dir.mkdir(parents=True)
        drv.proc = subprocess.Popen(
            [sys.executable, "-m", "podplumb.cli", "csi", "--endpoint", f"unix://{drv.socket}",
             "--node-id", "cli-node", "--state-dir", str(drv.state_dir)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        drv._connect()
        assert drv.node.NodeGetInfo(pb.NodeGetInfoRequest()).node_id == "cli-node"
    finally:
        assert not dispose_root(root, drv)
