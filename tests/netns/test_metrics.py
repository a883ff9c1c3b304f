"""The node daemon's /metrics and JSON logs, after real calls forwarded to it."""

import json
import os
import re
import shutil
import tempfile
import time

import pytest

from podplumb import client
from podplumb.install import install
from podplumb.runtime import DaemonProcess, Network, PluginFailed
from tests import kernel
from tests.netns.bridge_helpers import bridge_conflist
from tests.prometheus import sample


def log_entries(daemon) -> list[dict]:
    """Every line of the daemon's log, each one JSON object."""
    return [json.loads(line) for line in daemon.log(tail=None).splitlines() if line.strip()]


def served(daemon, command: str, exit_code: int) -> int:
    """Calls the daemon itself logged as served (a caller that found it slow runs in-process)."""
    pattern = re.compile(rf"call \d+: bridge {command} .* -> exit {exit_code} in")
    return sum(1 for e in log_entries(daemon) if pattern.search(e["message"]))


def metrics_url(daemon) -> str:
    for entry in log_entries(daemon):
        found = re.search(r"metrics on (http://\S+/metrics)", entry["message"])
        if found:
            return found.group(1)
    raise AssertionError(f"no metrics address logged: {daemon.log()}")


def scrape(url: str, ns: str) -> str:
    return kernel.sh("curl", "-sf", "--max-time", "10", url, ns=ns).stdout


def scrape_until(url: str, ns: str, settled, timeout=10) -> str:
    """A scrape where `settled(text)` holds (outcomes reach the daemon's main process a moment after
    the caller's answer), or the last one."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(url, ns)
        if settled(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def until_served(daemon, command, exit_code, call, attempts=5):
    """Make `call(i)` until the daemon served one (a loaded machine may make a caller skip it)."""
    for i in range(attempts):
        if served(daemon, command, exit_code):
            return
        try:
            os.unlink(daemon.socket + client.STALLED_SUFFIX)
        except FileNotFoundError:
            pass
        call(i)
    assert served(daemon, command, exit_code), f"the daemon never served a {command}: {daemon.log()}"


def test_daemon_counts_calls_and_leases_and_logs_json(host_ns, netns, data_dir, tmp_path):
    socket_dir = tempfile.mkdtemp(prefix="ppm-")
    daemon = DaemonProcess(host_ns, os.path.join(socket_dir, "cni.sock"), str(tmp_path / "daemon.log"),
                           args=["--metrics-address", "127.0.0.1:0", "--log-format", "json", "--leases-dir", data_dir],
                           wait_warm=True)
    try:
        daemon.start()
        url = metrics_url(daemon)
        bin_dir = tmp_path / "bin"
        install(str(bin_dir), daemon_socket=daemon.socket)
        conflist = bridge_conflist(data_dir)
        net = Network(conflist, bin_dir, host_ns=host_ns)
        pods = []

        def add(i):
            pods.append(netns("pod"))
            net.add(f"ctr{i}", kernel.netns_path(pods[-1]))

        def bad_add(i):
            bad = dict(conflist, plugins=[dict(conflist["plugins"][0], mtu="big")])
            with pytest.raises(PluginFailed) as failed:
                Network(bad, bin_dir, host_ns=host_ns).add(f"bad{i}", kernel.netns_path(netns("pod")))
            assert failed.value.error["code"] == 7

        until_served(daemon, "ADD", 0, add)
        until_served(daemon, "ADD", 1, bad_add)
        net.check("ctr0", kernel.netns_path(pods[0]))

        labels = {"plugin": "bridge"}
        text = scrape_until(url, host_ns, lambda t: sample(t, "podplumb_cni_requests_total", command="CHECK", code=0,
                                                           **labels) == served(daemon, "CHECK", 0))
        assert sample(text, "podplumb_cni_requests_total", command="ADD", code=0, **labels) == served(daemon, "ADD", 0)
        assert sample(text, "podplumb_cni_requests_total", command="ADD", code=7, **labels) == served(daemon, "ADD", 1)
        assert sample(text, "podplumb_cni_requests_total", command="CHECK", code=0, **labels) == \
            served(daemon, "CHECK", 0)
        adds = served(daemon, "ADD", 0) + served(daemon, "ADD", 1)
        assert sample(text, "podplumb_cni_request_duration_seconds_count", command="ADD", **labels) == adds
        assert sample(text, "podplumb_cni_request_duration_seconds_bucket", command="ADD", le="+Inf", **labels) == adds
        assert sample(text, "podplumb_cni_leases", network=conflist["name"]) == 2 * len(pods)   # IPv4 and IPv6

        for i, pod in enumerate(pods):
            net.delete(f"ctr{i}", kernel.netns_path(pod))
        text = scrape(url, host_ns)
        assert sample(text, "podplumb_cni_leases", network=conflist["name"]) == 0
        assert sample(text, "podplumb_cni_requests_total", command="DEL", code=0, **labels) == served(daemon, "DEL", 0)
    finally:
        code = daemon.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert code == 0, daemon.log()
    entries = log_entries(daemon)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any("serving on" in e["message"] for e in entries)
