"""The CNI deployment files: the Kubernetes DaemonSet and the systemd socket-activation units."""

import os
import pathlib
import shutil
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

CONF = pathlib.Path(__file__).resolve().parents[2] / "conf"
DAEMONSET = CONF / "kubernetes" / "cni" / "daemonset.yaml"
SYSTEMD = CONF / "systemd"
SOCKET = "/run/podplumb/cni.sock"


def _documents():
    with open(DAEMONSET) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def test_daemonset_is_valid_kubernetes():
    for doc in _documents():
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_daemonset_installs_the_executables_and_runs_the_daemon():
    (daemonset,) = _documents()
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert {"/opt/cni/bin", "/run/podplumb", "/var/lib/cni", "/run/netns"} <= set(host_paths.values())

    (install,) = pod["initContainers"]
    assert f"install --cni-bin-dir /host/opt/cni/bin --daemon-socket {SOCKET}" in install["command"][-1]
    (daemon,) = pod["containers"]
    assert daemon["command"][1:4] == ["daemon", "--socket", SOCKET]
    assert daemon["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: host_paths[m["name"]] for m in daemon["volumeMounts"]}
    for path in ("/opt/cni/bin", "/run/podplumb", "/var/lib/cni", "/run/netns"):
        assert mounts[path] == path, "the daemon must see host paths where the runtime names them"
    netns_mount = next(m for m in daemon["volumeMounts"] if m["mountPath"] == "/run/netns")
    assert netns_mount["mountPropagation"] == "HostToContainer"
    # the daemon's drain bound fits in the grace period
    drain = float(daemon["command"][daemon["command"].index("--drain-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] > drain


def _unit(name):
    return (SYSTEMD / name).read_text()


def test_systemd_units_activate_the_daemon_on_its_socket():
    socket_unit, service = _unit("podplumb-cni.socket"), _unit("podplumb-cni.service")
    assert f"ListenStream={SOCKET}" in socket_unit and "SocketMode=0600" in socket_unit
    assert "DirectoryMode=0700" in socket_unit
    assert "Requires=podplumb-cni.socket" in service
    assert f"daemon --socket {SOCKET}" in service
    assert "KillMode=mixed" in service      # SIGTERM to the daemon only: exec'd IPAM calls may finish


def test_systemd_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd); the unit texts are "
                    "still checked by test_systemd_units_activate_the_daemon_on_its_socket")
    podplumb = os.path.join(os.path.dirname(sys.executable), "podplumb")
    # verify checks that ExecStart exists: point it at this checkout's console script
    (tmp_path / "podplumb-cni.service").write_text(_unit("podplumb-cni.service").replace(
        "/usr/local/bin/podplumb", podplumb))
    (tmp_path / "podplumb-cni.socket").write_text(_unit("podplumb-cni.socket"))
    proc = subprocess.run([analyze, "verify", "./podplumb-cni.socket", "./podplumb-cni.service"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_daemonset_exposes_the_daemons_metrics():
    (daemonset,) = _documents()
    template = daemonset["spec"]["template"]
    (daemon,) = template["spec"]["containers"]
    address = daemon["command"][daemon["command"].index("--metrics-address") + 1]
    port = int(address.rsplit(":", 1)[1])
    assert {"name": "metrics", "containerPort": port, "hostPort": port, "protocol": "TCP"} in daemon["ports"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert daemon["command"][daemon["command"].index("--log-format") + 1] == "json"
