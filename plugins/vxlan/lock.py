"""One lock per overlay network on this host, held while its VTEP and peer entries change
(by concurrent ADDs, GC, or the overlay registry)."""

import contextlib
import fcntl
import os


@contextlib.contextmanager
def held(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
