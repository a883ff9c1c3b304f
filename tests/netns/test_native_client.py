"""The native thin client (podplumb/native/cni-client.c) as `podplumb install` builds it."""

import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from cni.invoke import our_module
from cni.limits import MAX_CONFIG_BYTES
from podplumb import client
from podplumb.install import LAUNCHER_SUFFIX, PLUGINS, install
from podplumb.runtime import exec_plugin
from tests import kernel
from tests.netns.bridge_helpers import bridge_conflist, host_links, leases

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")


def _is_elf(path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


@pytest.fixture
def native(node_daemon, tmp_path):
    daemon = node_daemon()
    bin_dir = tmp_path / "native-bin"
    install(str(bin_dir), daemon_socket=daemon.socket)
    return daemon, bin_dir


@pytest.fixture
def socket_dir():
    import tempfile
    path = tempfile.mkdtemp(prefix="ppn-")        # a unix socket path must stay under 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_install_writes_the_client_and_its_launcher(native):
    _, bin_dir = native
    for name, module in PLUGINS.items():
        assert _is_elf(bin_dir / name)
        assert our_module(str(bin_dir / name)) == module       # found as ours: delegated in-process
        assert our_module(str(bin_dir / (name + LAUNCHER_SUFFIX))) == module


def test_install_without_a_compiler_falls_back_and_says_so(tmp_path, capfd):
    old = os.environ.get("CC")
    os.environ["CC"] = "no-such-compiler-pp"
    try:
        install(str(tmp_path / "bin"), daemon_socket=str(tmp_path / "d.sock"))
    finally:
        os.environ.pop("CC") if old is None else os.environ.__setitem__("CC", old)
    assert "installing the Python launcher" in capfd.readouterr().err
    assert not _is_elf(tmp_path / "bin" / "bridge") and not (tmp_path / "bin" / "bridge.py").exists()


def test_add_del_through_the_native_client(native, host_ns, netns, data_dir):
    daemon, bin_dir = native
    conflist = bridge_conflist(data_dir, "1.0.0", subnet6=None)
    config = dict(conflist["plugins"][0], name=conflist["name"], cniVersion="1.0.0")
    kw = {"container_id": "ctr", "ifname": "eth0", "netns": kernel.netns_path(netns("pod")), "host_ns": host_ns}
    added = exec_plugin(bin_dir, "bridge", "ADD", config, **kw)
    assert added.code == 0, added.stdout + added.stderr
    assert leases(data_dir, conflist["name"]) == ["10.77.0.2"]
    assert exec_plugin(bin_dir, "bridge", "DEL", dict(config, prevResult=added.json), **kw).code == 0
    assert leases(data_dir, conflist["name"]) == []
    log = daemon.log(tail=None)
    assert ": bridge ADD container=ctr" in log and ": bridge DEL container=ctr" in log


def test_answers_match_the_python_launcher(native, cni_bin, host_ns):
    _, bin_dir = native
    for command, stdin in (("VERSION", {"cniVersion": "0.4.0"}), ("ADD", b"{not json"), ("ADD", {"cniVersion": "1.0.0"}),
                           ("FOO", {"cniVersion": "1.0.0"})):
        direct = exec_plugin(cni_bin, "bridge", command, stdin, host_ns=host_ns)
        native_run = exec_plugin(bin_dir, "bridge", command, stdin, host_ns=host_ns)
        assert (native_run.code, native_run.stdout) == (direct.code, direct.stdout)


def test_missing_environment(native, host_ns):
    """No CNI_COMMAND, no CNI_PATH, no PATH: the same spec error as without the daemon."""
    _, bin_dir = native
    proc = subprocess.run(["ip", "netns", "exec", host_ns, str(bin_dir / "bridge")], input=b'{"cniVersion":"1.0.0"}',
                          env={}, capture_output=True, timeout=30)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 4


def test_huge_stdin_gets_the_size_error(native, host_ns):
    _, bin_dir = native
    config = b'{"cniVersion": "0.4.0", "name": "big", "pad": "' + b"x" * (MAX_CONFIG_BYTES + 1000) + b'"}'
    started = time.monotonic()
    run = exec_plugin(bin_dir, "bridge", "ADD", config, container_id="c", ifname="eth0", netns="/run/netns/x",
                      host_ns=host_ns)
    assert time.monotonic() - started < 30
    assert run.code == 1 and run.json["code"] == 6 and "too large" in run.json["msg"]


def test_absent_socket_runs_standalone(tmp_path, socket_dir, host_ns, netns, data_dir):
    bin_dir = tmp_path / "bin"
    install(str(bin_dir), daemon_socket=os.path.join(socket_dir, "absent.sock"))
    conflist = bridge_conflist(data_dir, "1.0.0", subnet6=None)
    config = dict(conflist["plugins"][0], name=conflist["name"], cniVersion="1.0.0")
    kw = {"container_id": "ctr", "ifname": "eth0", "netns": kernel.netns_path(netns("pod")), "host_ns": host_ns}
    added = exec_plugin(bin_dir, "bridge", "ADD", config, **kw)
    assert added.code == 0 and added.stderr == b"", added.stdout + added.stderr
    assert config["bridge"] in host_links(host_ns)
    assert exec_plugin(bin_dir, "bridge", "DEL", config, **kw).code == 0


class FakeDaemon:
    """Greets, reads a request, then does what `behaviour` says."""

    def __init__(self, path, behaviour):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(8)
        self.behaviour = behaviour
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            client.send_message(conn, [client.GREETING])
            fields = client.recv_message(conn, time.monotonic() + 10)
            assert fields[0] == b"bridge"
            self.behaviour(conn)

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("behaviour, expected", [
    (lambda conn: conn.sendall(client.encode([b"0", b"x" * 100, b""])[:60]), "failed during the call"),
    (lambda conn: None, "failed during the call"),
    (lambda conn: conn.sendall(client.encode([b"zero", b"", b""])), "failed during the call"),
    (lambda conn: time.sleep(3), "did not answer within 1s"),
])
def test_a_daemon_failing_mid_call_means_try_again(tmp_path, socket_dir, behaviour, expected):
    path = os.path.join(socket_dir, "fake.sock")
    bin_dir = tmp_path / "bin"
    install(str(bin_dir), daemon_socket=path)
    fake = FakeDaemon(path, behaviour)
    try:
        started = time.monotonic()
        run = exec_plugin(bin_dir, "bridge", "ADD", {"cniVersion": "0.4.0", "name": "n"}, container_id="c",
                          ifname="eth0", netns="/run/netns/x", env={client.TIMEOUT_ENV: "1"})
        elapsed = time.monotonic() - started
    finally:
        fake.close()
    assert elapsed < 2.5
    assert run.code == 1, run
    error = run.json
    assert error["code"] == 11 and error["cniVersion"] == "0.4.0" and expected in error["details"], error
