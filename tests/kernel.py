"""Small helpers for tests that use the real kernel: namespaces, commands inside them
(podplumb.netns, with failures raised as AssertionError)."""

import json
import subprocess
import uuid

from podplumb import netns


def unique(prefix: str, length: int = 15) -> str:
    return (prefix + uuid.uuid4().hex)[:length]


def sh(*argv, ns=None, check=True, timeout=30, input=None) -> subprocess.CompletedProcess:
    try:
        return netns.sh(*argv, ns=ns, check=check, timeout=timeout, input=input)
    except RuntimeError as e:
        raise AssertionError(str(e)) from None


def ip_json(*args, ns=None):
    out = sh("ip", "-j", *args, ns=ns).stdout
    return json.loads(out) if out.strip() else []


add_netns = netns.add
del_netns = netns.delete
netns_path = netns.path
ping = netns.ping


def stop(proc: subprocess.Popen, timeout: float = 10):
    """SIGTERM a process we started, SIGKILL after `timeout`; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
