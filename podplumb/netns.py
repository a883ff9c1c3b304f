"""Named network namespaces through `ip netns`, for the demo, the benchmarks, the overlay lab and the
tests: make and delete them, run commands inside them, ping from them."""

import contextlib
import subprocess


def path(name: str) -> str:
    """The namespace's file, as CNI_NETNS names it."""
    return f"/run/netns/{name}"


def sh(*argv, ns: str | None = None, check: bool = True, timeout: float = 30,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Run `argv` (inside the namespace `ns` when given), output captured as text; RuntimeError
    when `check` and it exits non-zero."""
    if ns:
        argv = ("ip", "netns", "exec", ns) + argv
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def add(name: str):
    """A new namespace with its loopback up."""
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "set", "lo", "up", ns=name)
    except BaseException:
        delete(name)
        raise


def delete(name: str):
    """Delete the namespace; no error when it is already gone."""
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def ping(ns: str, address: str, count: int = 1, size: int | None = None) -> bool:
    """Whether `address` answers from inside `ns`; `size`: that payload, not fragmented."""
    argv = ["ping", "-c", str(count), "-W", "2", "-i", "0.2"]
    if size:
        argv += ["-s", str(size), "-M", "do"]
    return sh(*argv, address, ns=ns, check=False).returncode == 0


@contextlib.contextmanager
def namespaces(*names):
    """Make these namespaces; on the way out, delete those made (in reverse), whatever happened."""
    made = []
    try:
        for name in names:
            add(name)
            made.append(name)
        yield names
    finally:
        for name in reversed(made):
            delete(name)
