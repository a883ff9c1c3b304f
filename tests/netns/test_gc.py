"""`podplumb gc` and `podplumb status` on a fake host: a pod whose namespace was deleted without any
DEL is removed (lease, masquerade and host-port rules), a live pod is left alone."""

import json
import os
import subprocess
import sys

from podplumb.runtime import Network
from tests import kernel
from tests.netns.bridge_helpers import bridge_conflist, leases

PODPLUMB = os.path.join(os.path.dirname(sys.executable), "podplumb")


def podplumb(host_ns, *args, state_dir):
    """The command run inside the fake host, as an operator runs it on a node."""
    env = dict(os.environ, PODPLUMB_STATE_DIR=str(state_dir))
    return subprocess.run(["ip", "netns", "exec", host_ns, PODPLUMB, *args], capture_output=True, text=True,
                          env=env, timeout=120)


def ruleset(ns) -> str:
    return kernel.sh("nft", "list", "ruleset", ns=ns).stdout


def test_gc_removes_only_attachments_whose_pod_is_gone(host_ns, netns, cni_bin, data_dir, tmp_path):
    state_dir = tmp_path / "records"
    conflist = bridge_conflist(data_dir, ipMasq=True,
                               extra_plugins=[{"type": "portmap", "capabilities": {"portMappings": True}}])
    net = Network(conflist, cni_bin, host_ns=host_ns, env={"PODPLUMB_STATE_DIR": str(state_dir)})
    live, doomed = netns("pod"), netns("pod")
    net.add("live", kernel.netns_path(live), capability_args={
        "portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]})
    rules_with_live_only = ruleset(host_ns)
    leases_with_live_only = leases(data_dir, conflist["name"])
    net.add("doomed", kernel.netns_path(doomed), capability_args={
        "portMappings": [{"hostPort": 18082, "containerPort": 80, "protocol": "tcp"}]})
    assert len(leases(data_dir, conflist["name"])) == 4

    status = json.loads(podplumb(host_ns, "status", "--json", "--conf-dir", str(tmp_path), state_dir=state_dir).stdout)
    states = {a["containerID"]: a for a in status["attachments"]}
    assert states["doomed"]["state"] == "live" and states["doomed"]["plugins"] == ["bridge", "portmap"]
    assert states["doomed"]["hostPorts"] == ["tcp/18082->80"] and len(states["doomed"]["addresses"]) == 2

    kernel.del_netns(doomed)         # the runtime crashed: no DEL ever comes
    table = podplumb(host_ns, "status", "--conf-dir", str(tmp_path), state_dir=state_dir).stdout
    assert [line.split()[-1] for line in table.splitlines() if "doomed" in line] == ["stale"]
    assert [line.split()[-1] for line in table.splitlines() if "live " in line] == ["live"]

    dry = podplumb(host_ns, "gc", "--bin-dir", str(cni_bin), "--dry-run", state_dir=state_dir)
    assert dry.returncode == 0 and "would remove" in dry.stdout and "doomed" in dry.stdout, dry
    assert len(leases(data_dir, conflist["name"])) == 4

    run = podplumb(host_ns, "gc", "--bin-dir", str(cni_bin), "--conf-dir", str(tmp_path), state_dir=state_dir)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"network {conflist['name']} is no longer configured in {tmp_path}" in run.stdout
    assert f"removed {conflist['name']} doomed eth0 (bridge portmap" in run.stdout
    assert "tcp/18082->80" in run.stdout and "1 stale, 1 other" in run.stdout
    assert leases(data_dir, conflist["name"]) == leases_with_live_only
    assert ruleset(host_ns) == rules_with_live_only
    assert not (state_dir / conflist["name"] / "doomed").exists()

    again = podplumb(host_ns, "gc", "--bin-dir", str(cni_bin), state_dir=state_dir)
    assert "0 stale, 1 other" in again.stdout
    net.check("live", kernel.netns_path(live))
    net.delete("live", kernel.netns_path(live))
    assert leases(data_dir, conflist["name"]) == []
    assert not (state_dir / conflist["name"] / "live").exists(), "DEL removes the records"


def test_a_namespace_path_reused_by_another_pod_is_stale(host_ns, netns, cni_bin, data_dir, tmp_path):
    state_dir = tmp_path / "records"
    net = Network(bridge_conflist(data_dir), cni_bin, host_ns=host_ns, env={"PODPLUMB_STATE_DIR": str(state_dir)})
    pod = netns("pod")
    net.add("first", kernel.netns_path(pod))
    kernel.del_netns(pod)
    kernel.add_netns(pod)            # same path, another namespace
    try:
        status = json.loads(podplumb(host_ns, "status", "--json", state_dir=state_dir).stdout)
        assert [a["state"] for a in status["attachments"]] == ["stale"]
        assert podplumb(host_ns, "gc", "--bin-dir", str(cni_bin), state_dir=state_dir).returncode == 0
        assert leases(data_dir, net.conflist["name"]) == []
    finally:
        kernel.del_netns(pod)


def test_daemon_runs_gc_periodically(host_ns, netns, cni_bin, data_dir, tmp_path):
    import shutil
    import tempfile
    import time

    from podplumb.runtime import DaemonProcess
    state_dir = tmp_path / "records"
    socket_dir = tempfile.mkdtemp(prefix="ppgc-")
    daemon = DaemonProcess(host_ns, os.path.join(socket_dir, "cni.sock"), str(tmp_path / "daemon.log"),
                           env=dict(os.environ, PODPLUMB_STATE_DIR=str(state_dir)),
                           args=["--gc-interval", "0.5", "--gc-bin-dir", str(cni_bin)])
    try:
        daemon.start()
        net = Network(bridge_conflist(data_dir), cni_bin, host_ns=host_ns, env={"PODPLUMB_STATE_DIR": str(state_dir)})
        live, doomed = netns("pod"), netns("pod")
        net.add("live", kernel.netns_path(live))
        net.add("doomed", kernel.netns_path(doomed))
        kernel.del_netns(doomed)
        deadline = time.monotonic() + 30
        while "gc: removed" not in daemon.log(tail=None) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(leases(data_dir, net.conflist["name"])) == 2, daemon.log()
        assert "gc: removed" in daemon.log(tail=None)
        net.delete("live", kernel.netns_path(live))
    finally:
        assert daemon.stop() == 0, daemon.log()
        shutil.rmtree(socket_dir, ignore_errors=True)
