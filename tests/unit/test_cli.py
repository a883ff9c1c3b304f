"""The `podplumb` command as a newcomer meets it: install says what it replaces and can undo it,
--help explains options and defaults, errors exit non-zero."""

import os
import signal
import subprocess
import sys
import time

import pytest

from cni.invoke import our_module
from podplumb.install import PLUGINS

PODPLUMB = [sys.executable, "-m", "podplumb.cli"]


def podplumb(*args, timeout=120):
    return subprocess.run(PODPLUMB + list(args), capture_output=True, text=True, timeout=timeout)


def test_install_keeps_what_it_replaces_and_restore_puts_it_back(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bridge").write_bytes(b"\x7fELF the reference bridge")
    (bin_dir / "bridge").chmod(0o755)
    (bin_dir / "dhcp-other").write_text("not ours, not a name we install")

    run = podplumb("install", "--cni-bin-dir", str(bin_dir), "--daemon-socket", "")
    assert run.returncode == 0, run.stderr
    kept = bin_dir / ".podplumb-replaced" / "bridge"
    assert f"REPLACED; the previous bridge is kept as {kept}" in run.stdout
    assert "host-local   new" in run.stdout
    assert sys.executable in run.stdout and "after a move" in run.stdout
    assert kept.read_bytes() == b"\x7fELF the reference bridge"
    assert our_module(str(bin_dir / "bridge"))

    again = podplumb("install", "--cni-bin-dir", str(bin_dir), "--daemon-socket", "")
    assert "bridge       updated" in again.stdout, again.stdout
    assert kept.read_bytes() == b"\x7fELF the reference bridge", "our own executable is never kept"

    back = podplumb("install", "--restore", "--cni-bin-dir", str(bin_dir))
    assert back.returncode == 0, back.stdout + back.stderr
    assert (bin_dir / "bridge").read_bytes() == b"\x7fELF the reference bridge"
    assert os.access(bin_dir / "bridge", os.X_OK)
    assert sorted(os.listdir(bin_dir)) == ["bridge", "dhcp-other"]


def test_install_with_a_separate_backup_dir(tmp_path):
    bin_dir, backup = tmp_path / "bin", tmp_path / "kept"
    bin_dir.mkdir()
    (bin_dir / "portmap").write_text("#!/bin/sh\necho reference\n")
    run = podplumb("install", "--cni-bin-dir", str(bin_dir), "--backup-dir", str(backup), "--daemon-socket", "")
    assert run.returncode == 0 and (backup / "portmap").exists()
    assert podplumb("install", "--restore", "--cni-bin-dir", str(bin_dir), "--backup-dir", str(backup)).returncode == 0
    assert os.listdir(bin_dir) == ["portmap"] and not backup.exists()


@pytest.mark.parametrize("command, words", [
    ("install", ["/opt/cni/bin", "--backup-dir", "--restore", "replaced", "/run/podplumb/cni.sock"]),
    ("leases", ["/var/lib/cni/networks", "network"]),
    ("demo", ["namespaces", "remove", "No options"]),
    ("csi", ["/var/lib/podplumb/csi", "--node-id", "hostname"]),
    ("overlay", ["usage: podplumb overlay"]),
    ("daemon", ["usage: podplumb daemon", "/run/podplumb/cni.sock"]),
])
def test_help_explains_options_and_defaults(command, words):
    run = podplumb(command, "--help")
    assert run.returncode == 0, run.stderr
    for word in words:
        assert word in run.stdout, (word, run.stdout)


def test_leases_of_an_unknown_network_is_an_error(tmp_path):
    run = podplumb("leases", "--data-dir", str(tmp_path), "NOSUCHNET")
    assert run.returncode == 1 and "NOSUCHNET" in run.stderr and run.stdout == ""


def test_daemon_refuses_a_socket_in_a_missing_tree(tmp_path):
    run = podplumb("daemon", "--socket", str(tmp_path / "no" / "such" / "cni.sock"), timeout=60)
    assert run.returncode != 0 and "does not exist" in run.stderr
    assert not (tmp_path / "no").exists()


def test_daemon_removes_the_directory_it_made_for_its_socket(tmp_path):
    socket_dir = tmp_path / "run-podplumb"
    proc = subprocess.Popen(PODPLUMB + ["daemon", "--socket", str(socket_dir / "cni.sock")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (socket_dir / "cni.sock").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not socket_dir.exists()


def test_every_plugin_is_installed(tmp_path):
    podplumb("install", "--cni-bin-dir", str(tmp_path), "--daemon-socket", "")
    assert set(PLUGINS) <= set(os.listdir(tmp_path))
