"""The node daemon works where its caller is (network and mount namespace), one call at a time per
attachment, bounded requests, and a stalled daemon costs its callers little."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from cni.limits import MAX_CONFIG_BYTES
from podplumb import client
from podplumb.install import PLUGINS, install
from podplumb.runtime import exec_plugin
from tests import kernel
from tests.netns.bridge_helpers import bridge_conflist, host_links, leases
from tests.netns.test_daemon import _kill_quietly, _plugin_config, _slow_ipam, _wait_for


@pytest.fixture
def forwarding(node_daemon, tmp_path):
    daemon = node_daemon()
    bin_dir = tmp_path / "daemon-bin"
    install(str(bin_dir), daemon_socket=daemon.socket)
    return daemon, bin_dir


def _stop(daemon):
    """SIGSTOP, and wait until it took effect (a signal is delivered when the process next runs)."""
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while b") T " not in open(f"/proc/{daemon.proc.pid}/stat", "rb").read() and time.monotonic() < deadline:
        time.sleep(0.01)


def _calls(daemon, command="ADD"):
    return daemon.log(tail=None).count(f": bridge {command} container=")


def test_host_side_work_happens_in_the_callers_network_namespace(forwarding, host_ns, netns, data_dir):
    """The daemon lives in `host_ns`; the runtime calls from another namespace: the bridge and veth
    appear in the caller's namespace, never in the daemon's."""
    daemon, bin_dir = forwarding
    caller_ns = netns("ppcaller")
    daemon_links = host_links(host_ns)
    config = _plugin_config(bridge_conflist(data_dir, subnet6=None))
    kw = {"container_id": "ctr", "ifname": "eth0", "netns": kernel.netns_path(netns("pod")), "host_ns": caller_ns}
    added = exec_plugin(bin_dir, "bridge", "ADD", config, **kw)
    assert added.code == 0, added.stdout + added.stderr
    assert config["bridge"] in host_links(caller_ns)
    assert any(link.startswith("veth") for link in host_links(caller_ns))
    assert host_links(host_ns) == daemon_links
    assert _calls(daemon) == 1, "the call did not go through the daemon"
    deleted = exec_plugin(bin_dir, "bridge", "DEL", dict(config, prevResult=added.json), **kw)
    assert deleted.code == 0, deleted.stdout
    assert not any(link.startswith("veth") for link in host_links(caller_ns))
    assert leases(data_dir, config["name"]) == []


def test_paths_resolve_in_the_callers_mount_namespace(forwarding, host_ns, netns, tmp_path):
    """CNI_PATH and dataDir on a tmpfs mounted only in the caller's mount namespace: the daemon finds
    host-local there and writes the lease there, as the standalone executable would."""
    daemon, bin_dir = forwarding
    private = tmp_path / "private"          # empty in the daemon's view
    private.mkdir()
    conflist = bridge_conflist(str(private / "data"), subnet6=None)
    config = _plugin_config(conflist)
    (tmp_path / "config.json").write_text(json.dumps(config))
    pod = kernel.netns_path(netns("pod"))
    script = """
        mount -t tmpfs podplumb-test "$PRIVATE" && cp -a "$SRC"/. "$PRIVATE"/ || exit 9
        export CNI_CONTAINERID=ctr CNI_IFNAME=eth0 CNI_NETNS="$POD" CNI_PATH="$PRIVATE"
        CNI_COMMAND=ADD ip netns exec "$NS" "$PRIVATE/bridge" < "$CONFIG" > "$OUT/add.json"; echo $? > "$OUT/add.code"
        ls "$PRIVATE/data/$NET" > "$OUT/leases-after-add"
        CNI_COMMAND=DEL ip netns exec "$NS" "$PRIVATE/bridge" < "$CONFIG" > "$OUT/del.json"; echo $? > "$OUT/del.code"
        ls "$PRIVATE/data/$NET" > "$OUT/leases-after-del"
    """
    env = {"PATH": os.environ["PATH"], "PRIVATE": str(private), "SRC": str(bin_dir), "POD": pod, "NS": host_ns,
           "CONFIG": str(tmp_path / "config.json"), "OUT": str(tmp_path), "NET": conflist["name"]}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "add.code").read_text().strip() == "0", (tmp_path / "add.json").read_text() + proc.stderr
    assert (tmp_path / "del.code").read_text().strip() == "0", (tmp_path / "del.json").read_text() + proc.stderr
    lease_files = (tmp_path / "leases-after-add").read_text().split()
    assert "10.77.0.2" in lease_files
    assert "10.77.0.2" not in (tmp_path / "leases-after-del").read_text().split()
    assert os.listdir(private) == [], "the daemon wrote into its own view of the file system"
    assert _calls(daemon, "ADD") == 1 and _calls(daemon, "DEL") == 1, daemon.log()


def test_killed_clients_add_is_rolled_back_before_the_del_runs(forwarding, host_ns, netns, tmp_path):
    """The runtime kills the plugin mid-ADD and sends DEL at once: the ADD is undone first (under the
    attachment's lock), the DEL then finds nothing, and the daemon's log has no traceback."""
    daemon, bin_dir = forwarding
    pid_file = _slow_ipam(tmp_path)
    data_dir = tmp_path / "ipam"
    conflist = bridge_conflist(str(data_dir), "1.0.0", subnet6=None)
    config = _plugin_config(conflist)
    config["ipam"]["type"] = "slow-ipam"
    links_before = host_links(host_ns)
    pod = kernel.netns_path(netns("pod"))
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr", "CNI_IFNAME": "eth0",
           "CNI_NETNS": pod, "CNI_PATH": f"{bin_dir}:{tmp_path}"}
    launcher = subprocess.Popen(["ip", "netns", "exec", host_ns, str(bin_dir / "bridge")], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    launcher.stdin.write(json.dumps(config).encode())
    launcher.stdin.close()
    ipam_pid = _wait_for(pid_file)
    try:
        launcher.kill()                  # as a runtime does on its timeout
        launcher.wait()
        deleted = exec_plugin(bin_dir, "bridge", "DEL", config, container_id="ctr", ifname="eth0", netns=pod,
                              host_ns=host_ns, path=[str(bin_dir), str(tmp_path)])
    finally:
        _kill_quietly(ipam_pid)
    assert deleted.code == 0, deleted.stdout + deleted.stderr
    log = daemon.log(tail=None)
    assert "rolled back" in log and log.index("rolled back") < log.index(": bridge DEL container=ctr ifname=eth0 ->")
    assert "Traceback" not in log
    assert set(host_links(host_ns)) <= set(links_before) | {config["bridge"]}
    assert leases(str(data_dir), conflist["name"]) == []


def test_oversized_config_gets_a_size_error_not_try_again(forwarding, host_ns):
    """A 70 MB config: code 6 naming the bound, as without the daemon (a retry could never succeed)."""
    _, bin_dir = forwarding
    config = b'{"cniVersion": "1.0.0", "name": "big", "pad": "' + b"x" * (70 << 20) + b'"}'
    started = time.monotonic()
    run = exec_plugin(bin_dir, "bridge", "ADD", config, container_id="c", ifname="eth0",
                      netns="/run/netns/none", host_ns=host_ns)
    assert time.monotonic() - started < 10
    assert run.code == 1 and run.json["code"] == 6
    assert "too large" in run.json["msg"] and str(MAX_CONFIG_BYTES) in run.json["details"]


def test_daemon_bounds_the_request_it_reads(forwarding):
    """A client that announces a frame past the bound gets code 6 at once, without sending it."""
    daemon, _ = forwarding
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(daemon.socket)
        assert client.recv_message(sock, time.monotonic() + 10) == [client.GREETING]
        sock.sendall((70 << 20).to_bytes(4, "big") + b"\0" * 100)
        code, stdout, _ = client.recv_message(sock, time.monotonic() + 10)
    assert code == b"1" and json.loads(stdout)["code"] == 6
    assert "Traceback" not in daemon.log(tail=None)


def test_clients_that_go_away_leave_no_traceback(forwarding):
    daemon, _ = forwarding
    for _ in range(3):
        with socket.socket(socket.AF_UNIX) as sock:      # greeted, then gone without a request
            sock.connect(daemon.socket)
            client.recv_message(sock, time.monotonic() + 10)
        with socket.socket(socket.AF_UNIX) as sock:      # half a request, then gone
            sock.connect(daemon.socket)
            client.recv_message(sock, time.monotonic() + 10)
            sock.sendall(client.encode([b"x" * 100])[:50])
    assert client.forward(daemon.socket, PLUGINS["bridge"], {"CNI_COMMAND": "VERSION"}, b"")[1] == 0
    time.sleep(0.2)
    log = daemon.log(tail=None)
    assert log.count("the caller went away") >= 6 and "Traceback" not in log


def test_a_stalled_daemon_costs_one_short_wait_then_is_skipped(forwarding, host_ns):
    """SIGSTOP the daemon: the first call waits the greeting bound (the listener is seen stopped, so
    not the longer bound of a busy one) and marks the socket stalled; the next calls do not wait at
    all. After SIGCONT the abandoned connection is dropped quietly."""
    daemon, bin_dir = forwarding
    _stop(daemon)
    try:
        started = time.monotonic()
        assert client.forward(daemon.socket, PLUGINS["bridge"], {"CNI_COMMAND": "VERSION"}, b"") is None
        waited = time.monotonic() - started
        assert os.path.exists(daemon.socket + client.STALLED_SUFFIX)
        run = exec_plugin(bin_dir, "bridge", "ADD", b"not json", host_ns=host_ns)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert client.GREETING_TIMEOUT <= waited < client.BUSY_GREETING_TIMEOUT - 0.5, waited
    assert run.code == 1 and run.json["code"] == 4 and b"did not greet" not in run.stderr
    time.sleep(0.5)
    assert "Traceback" not in daemon.log(tail=None)


def test_a_running_daemon_slow_to_greet_is_waited_for(forwarding):
    """The listener runs (a loaded machine): the client waits past the short bound, up to the longer one."""
    daemon, _ = forwarding
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(daemon.socket)
        assert client.daemon_running(sock)
    _stop(daemon)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(daemon.socket)
            assert not client.daemon_running(sock)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)


def test_call_processes_serve_one_call_after_another_each_where_its_caller_is(forwarding, host_ns, netns, data_dir):
    """Calls from two namespaces playing two hosts, alternating: the call processes serve several
    calls each (the log names the process of every call), and each call's bridge and veth appear in
    its own caller's namespace."""
    daemon, bin_dir = forwarding
    callers = [netns("ppcallera"), netns("ppcallerb")]
    daemon_links = host_links(host_ns)
    config = _plugin_config(bridge_conflist(data_dir, subnet6=None))
    for round_ in range(4):
        for i, caller_ns in enumerate(callers):
            kw = {"container_id": f"ctr{round_}{i}", "ifname": "eth0", "netns": kernel.netns_path(netns("pod")),
                  "host_ns": caller_ns}
            added = exec_plugin(bin_dir, "bridge", "ADD", config, **kw)
            assert added.code == 0, added.stdout + added.stderr
            veth = added.json["interfaces"][1]["name"]
            assert veth in host_links(caller_ns) and veth not in host_links(callers[1 - i])
            deleted = exec_plugin(bin_dir, "bridge", "DEL", dict(config, prevResult=added.json), **kw)
            assert deleted.code == 0, deleted.stdout
            assert veth not in host_links(caller_ns)
    assert host_links(host_ns) == daemon_links
    assert leases(data_dir, config["name"]) == []
    processes = re.findall(r": bridge (?:ADD|DEL) container=ctr\d+ .* \(process (\d+)\)", daemon.log(tail=None))
    assert len(processes) == 16
    assert len(set(processes)) < len(processes), "every call ran in a process of its own"
