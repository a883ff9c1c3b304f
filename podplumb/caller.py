"""Working where a daemon's caller is: its network namespace and its view of the file system.

A call process (podplumb.worker) enters the caller's network and mount namespaces with setns(2) and
its root directory with chroot(2), from file descriptors the caller passed (or opened through
/proc/<pid>/ when it passed none). Only a call process does this, never the daemon or the worker host.
Being in the caller's mount namespace keeps it alive: a caller that exits mid-call (and with it maybe
the last process of its namespace) does not take the mounts the call still needs (/proc, /run/netns).
"""

import ctypes
import errno
import importlib.machinery
import os
import socket
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
SINGLE_THREAD_WAIT = 0.5
NAMESPACES = ("net", "mnt")       # then the root: the order of podplumb.client.CALLER_NAMESPACES
_libc = ctypes.CDLL(None, use_errno=True)


class CallerUnreachable(Exception):
    """The caller's namespaces could not be entered."""


def peer_pid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def open_by_pid(pid: int) -> list[int]:
    """[network namespace, mount namespace, root] of process `pid`: for a caller that sent none."""
    if pid <= 0:
        raise CallerUnreachable("the caller sent no namespaces and its pid is not visible here")
    fds = []
    try:
        for path in [f"/proc/{pid}/ns/{ns}" for ns in NAMESPACES] + [f"/proc/{pid}/root"]:
            fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise CallerUnreachable(f"cannot open {e.filename}: {e.strerror}") from None
    return fds


def enter(net_fd: int, mnt_fd: int, root_fd: int, own_root_fd: int):
    """Move this single-threaded call process into the caller's namespaces and root (from wherever
    its previous call left it).

    Modules not imported yet are then still found, through `own_root_fd` (the daemon's own root):
    the caller's file system need not hold podplumb."""
    if not _same(net_fd, "/proc/self/ns/net"):
        _setns(net_fd, CLONE_NEWNET, "network")
    if _same(mnt_fd, "/proc/self/ns/mnt") and _same(root_fd, "/"):
        return                      # the caller sees the file system as we do
    _setns(mnt_fd, CLONE_NEWNS, "mount")
    try:
        os.fchdir(root_fd)
        os.chroot(".")
        os.chdir("/")
    except OSError as e:
        raise CallerUnreachable(f"entering the caller's root directory: {e.strerror}") from None
    _import_through(f"/proc/self/fd/{own_root_fd}")


def _same(fd: int, path: str) -> bool:
    try:
        mine, theirs = os.stat(path), os.fstat(fd)
    except OSError:           # the previous caller's root has no /proc
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def _setns(fd: int, kind: int, what: str):
    """setns(2). A mount namespace is entered only by a single-threaded process (EINVAL otherwise):
    a thread of the previous call, joined already, may still be on its way out for a moment."""
    deadline = time.monotonic() + SINGLE_THREAD_WAIT
    while _libc.setns(fd, kind) != 0:
        error = ctypes.get_errno()
        if error != errno.EINVAL or kind != CLONE_NEWNS or time.monotonic() > deadline:
            raise CallerUnreachable(f"setns into the caller's {what} namespace: {os.strerror(error)}")
        time.sleep(0.0005)


def _import_through(own_root: str):
    """Modules first imported after the chroot are found in the daemon's root, seen through /proc
    (when the caller's root has /proc). A finder that rewrites the search path of each such import,
    rather than a rewrite of every imported package's path up front: that touches every module
    object, and in a forked process each touched page is a copy (about 6 ms a call)."""
    if os.path.isdir(own_root) and not any(isinstance(finder, _ThroughRoot) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ThroughRoot(own_root))


class _ThroughRoot:
    def __init__(self, root: str):
        self.root = root

    def find_spec(self, name, path=None, target=None):
        search = [self._through(entry) for entry in (sys.path if path is None else path)]
        return importlib.machinery.PathFinder.find_spec(name, search, target)

    def _through(self, entry):
        if isinstance(entry, str) and entry.startswith("/") and not entry.startswith(self.root + "/"):
            return self.root + entry
        return entry
