"""Small helpers for tests that use the real kernel: namespaces, commands inside them."""

import json
import subprocess
import uuid


def unique(prefix: str, length: int = 15) -> str:
    return (prefix + uuid.uuid4().hex)[:length]


def sh(*argv, ns=None, check=True, timeout=30, input=None) -> subprocess.CompletedProcess:
    if ns:
        argv = ("ip", "netns", "exec", ns) + argv
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def ip_json(*args, ns=None):
    out = sh("ip", "-j", *args, ns=ns).stdout
    return json.loads(out) if out.strip() else []


def add_netns(name: str):
    sh("ip", "netns", "add", name)
    sh("ip", "link", "set", "lo", "up", ns=name)


def del_netns(name: str):
    sh("ip", "netns", "del", name, check=False)


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def ping(ns: str, address: str, count: int = 1, size: int | None = None) -> bool:
    argv = ["ping", "-c", str(count), "-W", "2", "-i", "0.2"]
    if size:
        argv += ["-s", str(size), "-M", "do"]
    return sh(*argv, address, ns=ns, check=False).returncode == 0
