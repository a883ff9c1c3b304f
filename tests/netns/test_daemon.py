"""The node daemon against the real kernel: same answers as in-process, bounded failures, concurrency."""

import concurrent.futures
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from podplumb import client
from podplumb.install import PLUGINS, install
from podplumb.runtime import exec_plugin
from tests import kernel
from tests.netns.bridge_helpers import bridge_conflist, host_links, leases, pod_addresses

BRIDGE = PLUGINS["bridge"]


@pytest.fixture
def forwarding(node_daemon, tmp_path):
    """A running daemon in the fake host, and a bin dir whose executables forward to it."""
    daemon = node_daemon()
    bin_dir = tmp_path / "daemon-bin"
    install(str(bin_dir), daemon_socket=daemon.socket)
    return daemon, bin_dir


def _plugin_config(conflist, index=0):
    return dict(conflist["plugins"][index], name=conflist["name"], cniVersion=conflist["cniVersion"])


def _slow_ipam(directory, before_exec="sleep 60"):
    """An IPAM executable that records its pid, waits on ADD, then (if it gets there) acts as host-local."""
    path = directory / "slow-ipam"
    path.write_text(f"#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  echo $$ > {directory}/slow-ipam.pid\n"
                    f"  {before_exec}\nfi\nexec /usr/lib/cni/host-local\n")
    path.chmod(0o755)
    return directory / "slow-ipam.pid"


def _wait_for(path, timeout=20):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) or not open(path).read().strip():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)
    return int(open(path).read())


def _kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _without_random_parts(result):
    """An ADD result less what is random by design: MAC addresses and the host veth's name."""
    interfaces = [{k: v for k, v in i.items() if k != "mac"} for i in result["interfaces"]]
    for interface in interfaces:
        if interface["name"].startswith("veth") and "sandbox" not in interface:
            interface["name"] = "veth"
    return dict(result, interfaces=interfaces)


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0", "1.1.0", None])
def test_version_answer_matches_in_process(forwarding, cni_bin, host_ns, version):
    _, bin_dir = forwarding
    config = {"cniVersion": version} if version else {}
    for plugin in ("bridge", "host-local"):
        direct = exec_plugin(cni_bin, plugin, "VERSION", config, host_ns=host_ns)
        forwarded = exec_plugin(bin_dir, plugin, "VERSION", config, host_ns=host_ns)
        assert (forwarded.code, forwarded.stdout) == (direct.code, direct.stdout) == (0, direct.stdout)


def test_error_answer_matches_in_process(forwarding, cni_bin, host_ns, netns, data_dir):
    _, bin_dir = forwarding
    config = _plugin_config(bridge_conflist(data_dir, "0.4.0"))
    pod = kernel.netns_path(netns("pod"))
    cases = [("ADD", b"{not json", {}),
             ("ADD", config, {}),                                       # no CNI_CONTAINERID
             ("ADD", config, {"container_id": "c1", "ifname": "eth0", "netns": "/run/netns/missing-pp"}),
             ("CHECK", dict(config, cniVersion="0.3.1"), {"container_id": "c1", "ifname": "eth0", "netns": pod})]
    for command, stdin, kw in cases:
        direct = exec_plugin(cni_bin, "bridge", command, stdin, host_ns=host_ns, **kw)
        forwarded = exec_plugin(bin_dir, "bridge", command, stdin, host_ns=host_ns, **kw)
        assert direct.code == 1 and json.loads(direct.stdout)["code"] in (3, 4, 6, 1)
        assert (forwarded.code, forwarded.stdout) == (direct.code, direct.stdout)
        assert forwarded.stderr == direct.stderr or json.loads(direct.stdout)["msg"] in forwarded.stderr.decode()


def test_add_del_matches_in_process(forwarding, cni_bin, host_ns, netns, tmp_path):
    """The same ADD and DEL, once in-process and once through the daemon, on fresh leases each time."""
    _, bin_dir = forwarding
    bridge = kernel.unique("ppbr")
    pod = kernel.netns_path(netns("pod"))
    answers = {}
    for mode, directory in (("standalone", cni_bin), ("daemon", bin_dir)):
        data_dir = tmp_path / f"ipam-{mode}"
        conflist = bridge_conflist(str(data_dir), "1.0.0", bridge=bridge)
        conflist["name"] = "same-net"
        config = _plugin_config(conflist)
        kw = {"container_id": "ctr", "ifname": "eth0", "netns": pod, "host_ns": host_ns}
        added = exec_plugin(directory, "bridge", "ADD", config, **kw)
        assert added.code == 0, added.stdout + added.stderr
        assert leases(str(data_dir), "same-net") == sorted(pod_addresses(added.json).values())
        deleted = exec_plugin(directory, "bridge", "DEL", dict(config, prevResult=added.json), **kw)
        assert (deleted.code, deleted.stdout) == (0, b"")
        assert leases(str(data_dir), "same-net") == []
        answers[mode] = _without_random_parts(added.json)
    assert answers["daemon"] == answers["standalone"]


def test_parallel_adds_get_distinct_addresses(forwarding, host_ns, netns, data_dir):
    daemon, bin_dir = forwarding
    net_conf = bridge_conflist(data_dir, subnet6=None)
    config = _plugin_config(net_conf)
    pods = [kernel.netns_path(netns("pod")) for _ in range(16)]

    def call(command, i):
        return exec_plugin(bin_dir, "bridge", command, config, container_id=f"ctr{i}", ifname="eth0",
                           netns=pods[i], host_ns=host_ns)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        added = list(pool.map(lambda i: call("ADD", i), range(16)))
        assert [r.code for r in added] == [0] * 16, [r.stdout for r in added if r.code]
        addresses = [pod_addresses(r.json)[4] for r in added]
        assert len(set(addresses)) == 16
        assert leases(data_dir, net_conf["name"]) == sorted(addresses)
        deleted = list(pool.map(lambda i: call("DEL", i), range(16)))
    assert [r.code for r in deleted] == [0] * 16
    assert leases(data_dir, net_conf["name"]) == []
    assert daemon.log(tail=None).count(": bridge ADD ") >= 16, "the calls did not go through the daemon"


def test_unknown_module_is_refused(forwarding):
    daemon, _ = forwarding
    for module in ("os:system", "subprocess:run", "plugins.bridge.plugin:add", "tests.conftest:PluginHost"):
        stdout, code = client.forward(daemon.socket, module, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')
        error = json.loads(stdout)
        assert code == 1 and error["code"] == 4 and error["cniVersion"] == "0.4.0"
        assert "does not serve" in error["msg"]
    assert client.forward(daemon.socket, BRIDGE, {"CNI_COMMAND": "VERSION"}, b"")[1] == 0


def test_killed_mid_request_returns_try_again(forwarding, host_ns, netns, tmp_path):
    daemon, bin_dir = forwarding
    pid_file = _slow_ipam(tmp_path)
    config = _plugin_config(bridge_conflist(str(tmp_path / "ipam")))
    config["ipam"]["type"] = "slow-ipam"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(exec_plugin, bin_dir, "bridge", "ADD", config, container_id="ctr", ifname="eth0",
                           netns=kernel.netns_path(netns("pod")), host_ns=host_ns,
                           path=[str(bin_dir), str(tmp_path)])
        ipam_pid = _wait_for(pid_file)
        try:
            os.kill(daemon.proc.pid, signal.SIGKILL)
            started = time.monotonic()
            run = call.result(timeout=10)
        finally:
            _kill_quietly(ipam_pid)
    assert time.monotonic() - started < 5
    assert run.code != 0 and run.json["code"] == 11 and run.json["cniVersion"] == "1.1.0"


def test_call_out_of_time_is_rolled_back(forwarding, host_ns, netns, tmp_path):
    """A call bounded by the caller's timeout: the daemon stops the ADD, undoes it and answers 11."""
    daemon, bin_dir = forwarding
    pid_file = _slow_ipam(tmp_path)
    data_dir = tmp_path / "ipam"
    conflist = bridge_conflist(str(data_dir), "0.4.0")
    config = _plugin_config(conflist)
    config["ipam"]["type"] = "slow-ipam"
    links_before = host_links(host_ns)
    started = time.monotonic()
    run = exec_plugin(bin_dir, "bridge", "ADD", config, container_id="ctr", ifname="eth0",
                      netns=kernel.netns_path(netns("pod")), host_ns=host_ns,
                      path=[str(bin_dir), str(tmp_path)], env={client.TIMEOUT_ENV: "2"})
    elapsed = time.monotonic() - started
    _kill_quietly(_wait_for(pid_file))
    assert 0.9 < elapsed < 2
    assert run.code != 0 and run.json["code"] == 11 and run.json["cniVersion"] == "0.4.0"
    assert "rolled back" in run.json["details"] and "ran out of time" in run.json["details"]
    assert set(host_links(host_ns)) <= set(links_before) | {config["bridge"]}
    assert leases(str(data_dir), conflist["name"]) == []
    assert "Traceback" not in daemon.log(tail=None)


def test_stopped_call_times_out_for_the_caller_then_rolls_back(forwarding, host_ns, netns, tmp_path):
    """A call process that does not answer costs the caller its own bound; when it runs again it undoes
    the ADD its caller gave up on."""
    daemon, bin_dir = forwarding
    pid_file = _slow_ipam(tmp_path)
    data_dir = tmp_path / "ipam"
    conflist = bridge_conflist(str(data_dir), "0.4.0")
    config = _plugin_config(conflist)
    config["ipam"]["type"] = "slow-ipam"
    links_before = host_links(host_ns)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(exec_plugin, bin_dir, "bridge", "ADD", config, container_id="ctr", ifname="eth0",
                           netns=kernel.netns_path(netns("pod")), host_ns=host_ns,
                           path=[str(bin_dir), str(tmp_path)], env={client.TIMEOUT_ENV: "2"})
        ipam_pid = _wait_for(pid_file)
        call_process = int(open(f"/proc/{ipam_pid}/stat").read().rsplit(")", 1)[1].split()[1])
        os.kill(call_process, signal.SIGSTOP)
        started = time.monotonic()
        try:
            run = call.result(timeout=15)
        finally:
            os.kill(call_process, signal.SIGCONT)
    assert time.monotonic() - started < 3
    assert run.code != 0 and run.json["code"] == 11 and run.json["cniVersion"] == "0.4.0"
    assert "did not answer within 2s" in run.json["details"]
    deadline = time.monotonic() + 10
    while "rolled back" not in daemon.log(tail=None) and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_quietly(ipam_pid)
    assert "rolled back" in daemon.log(tail=None)
    assert set(host_links(host_ns)) <= set(links_before) | {config["bridge"]}
    assert leases(str(data_dir), conflist["name"]) == []
    assert "Traceback" not in daemon.log(tail=None)


def test_stopped_daemon_before_a_call_means_in_process(forwarding, cni_bin, host_ns):
    """Nothing was asked of a daemon that cannot greet: the executable serves the call itself."""
    daemon, bin_dir = forwarding
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        run = exec_plugin(bin_dir, "bridge", "ADD", b"not json", host_ns=host_ns)
        elapsed = time.monotonic() - started
    finally:
        daemon.kill()
    assert run.code == 1 and run.stdout == exec_plugin(cni_bin, "bridge", "ADD", b"not json", host_ns=host_ns).stdout
    assert elapsed < client.CONNECT_TIMEOUT + 3
    assert b"running in-process" in run.stderr


def test_stale_socket_falls_back_to_in_process(forwarding, cni_bin, host_ns, netns, data_dir):
    daemon, bin_dir = forwarding
    daemon.kill()                                    # SIGKILL: the socket file stays behind
    assert stat.S_ISSOCK(os.lstat(daemon.socket).st_mode)
    assert client.forward(daemon.socket, BRIDGE, {"CNI_COMMAND": "VERSION"}, b"") is None
    config = _plugin_config(bridge_conflist(data_dir))
    kw = {"container_id": "ctr", "ifname": "eth0", "netns": kernel.netns_path(netns("pod")), "host_ns": host_ns}
    added = exec_plugin(bin_dir, "bridge", "ADD", config, **kw)
    assert added.code == 0 and added.stderr == b"", added.stdout + added.stderr
    assert exec_plugin(bin_dir, "bridge", "DEL", config, **kw).code == 0


def test_restart_replaces_a_stale_socket(node_daemon):
    first = node_daemon()
    first.kill()
    second = node_daemon()            # same socket path: the stale file is replaced
    assert second.socket == first.socket
    assert client.forward(second.socket, BRIDGE, {"CNI_COMMAND": "VERSION"}, b"")[1] == 0


def test_socket_is_private(host_ns, tmp_path):
    (tmp_path / "run").mkdir()          # as /run is: the daemon makes only the last directory
    directory = tmp_path / "run" / "podplumb"
    from tests.conftest import NodeDaemon
    daemon = NodeDaemon(host_ns, str(directory / "c.sock"), str(tmp_path / "d.log"))
    if len(daemon.socket) > 100:
        pytest.skip("tmp path too long for a unix socket")
    daemon.start()
    try:
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.lstat(daemon.socket).st_mode) == 0o600
    finally:
        assert daemon.stop() == 0
    assert not os.path.exists(daemon.socket)
    assert not directory.exists(), "the directory the daemon made goes with it"


def test_sigterm_finishes_the_call_in_flight(forwarding, host_ns, netns, tmp_path, cni_bin):
    daemon, bin_dir = forwarding
    pid_file = _slow_ipam(tmp_path, before_exec="sleep 2")
    data_dir = tmp_path / "ipam"
    config = _plugin_config(bridge_conflist(str(data_dir), "1.0.0", subnet6=None))   # reference: up to 1.0.0
    config["ipam"]["type"] = "slow-ipam"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(exec_plugin, bin_dir, "bridge", "ADD", config, container_id="ctr", ifname="eth0",
                           netns=kernel.netns_path(netns("pod")), host_ns=host_ns,
                           path=[str(bin_dir), str(tmp_path)])
        _wait_for(pid_file)
        daemon.proc.terminate()
        time.sleep(0.3)
        assert not os.path.exists(daemon.socket), "a stopping daemon removes its socket at once"
        late = exec_plugin(bin_dir, "bridge", "VERSION", {}, host_ns=host_ns)    # served in-process
        run = call.result(timeout=30)
    assert late.code == 0
    assert run.code == 0, run.stdout + run.stderr
    assert daemon.proc.wait(10) == 0


def test_request_logs_go_to_each_callers_file_only(forwarding, host_ns, netns, tmp_path):
    """PODPLUMB_LOG_FILE is per call in the daemon too: no handler outlives its call."""
    _, bin_dir = forwarding
    pod = kernel.netns_path(netns("pod"))
    files = [tmp_path / f"call{i}.log" for i in range(3)]
    for i, path in enumerate(files):
        run = exec_plugin(bin_dir, "bridge", "ADD", {"cniVersion": "1.0.0", "name": f"net{i}", "mtu": "x"},
                          container_id=f"ctr{i}", ifname="eth0", netns=pod, host_ns=host_ns,
                          env={"PODPLUMB_LOG_FILE": str(path)})
        assert run.code == 1 and b"mtu" in run.stdout
    for i, path in enumerate(files):
        text = path.read_text()
        assert f"ctr{i}" in text and not any(f"ctr{j}" in text for j in range(3) if j != i), text


def test_socket_activation(host_ns, tmp_path):
    """systemd hands over a listening socket (LISTEN_FDS): the daemon serves it and leaves the file."""
    activator = "/usr/bin/systemd-socket-activate"
    if not os.access(activator, os.X_OK):
        pytest.skip("systemd-socket-activate is not installed")
    socket_path = f"/tmp/ppd-act-{kernel.unique('', 8)}.sock"
    podplumb = os.path.join(os.path.dirname(sys.executable), "podplumb")
    with open(tmp_path / "act.log", "wb") as log:
        proc = subprocess.Popen([activator, "-l", socket_path, "ip", "netns", "exec", host_ns, podplumb, "daemon"],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        answer = None
        while answer is None and time.monotonic() < deadline:
            if os.path.exists(socket_path):
                answer = client.forward(socket_path, BRIDGE, {"CNI_COMMAND": "VERSION"}, b"")
            time.sleep(0.1)
        assert answer is not None and answer[1] == 0, (tmp_path / "act.log").read_text()
        assert "serving" in (tmp_path / "act.log").read_text()
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if os.path.exists(socket_path):
            os.unlink(socket_path)


def test_overlay_that_cannot_start_stops_the_daemon_cleanly(host_ns, tmp_path):
    config = tmp_path / "overlay.conflist"
    config.write_text(json.dumps({"cniVersion": "1.1.0", "name": "ovl", "plugins": [{
        "type": "vxlan", "vni": 42, "stateDir": str(tmp_path / "state"),
        "cluster": {"etcdEndpoints": ["http://127.0.0.1:9"], "cidr": "10.99.0.0/16",
                    "dataDir": str(tmp_path / "registry")}}]}))
    socket_path = tmp_path / "d.sock"
    podplumb = os.path.join(os.path.dirname(sys.executable), "podplumb")
    proc = subprocess.run(["ip", "netns", "exec", host_ns, podplumb, "daemon", "--socket", str(socket_path),
                           "--overlay-config", str(config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "overlay registry cannot start" in proc.stderr and "Traceback" not in proc.stderr
    assert not socket_path.exists()
