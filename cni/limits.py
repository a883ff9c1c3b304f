"""Bounds on what one request may ask of a plugin, so that no input can exhaust memory or time.

The reference plugins have none of these; every real config stays far below them:
- a network config (stdin) of at most 4 MiB, nested at most 32 deep (a config with a prevResult
  is about 6 deep; `cni.dev/valid-attachments` of a node with 10,000 pods is about 1 MiB);
- files a config names (`resolvConf`) read only when they are regular files of at most 64 KiB;
- at most 64 IPAM range sets, 256 ranges in one set, 1024 routes, 1024 port mappings, 4096 peers.
Going past a bound is a config error (code 7), or a decoding error (code 6) for size and depth.

Standard library only: every plugin call is a new process.
"""

import os
import stat

from cni.errors import CNIError, DECODE_FAILURE, IO_FAILURE, config_error

MAX_CONFIG_BYTES = 4 << 20
MAX_JSON_DEPTH = 32
MAX_FILE_BYTES = 64 << 10
MAX_RANGE_SETS = 64
MAX_RANGES_PER_SET = 256
MAX_ROUTES = 1024
MAX_STATIC_ADDRESSES = 64   # a pod interface's fixed addresses (static IPAM)
MAX_PORT_MAPPINGS = 1024
MAX_PEERS = 4096


def check_config_size(stdin: bytes):
    if len(stdin) > MAX_CONFIG_BYTES:
        raise CNIError(DECODE_FAILURE, f"network config of {len(stdin)} bytes is too large",
                       f"at most {MAX_CONFIG_BYTES} bytes")


def check_depth(value, limit: int = MAX_JSON_DEPTH):
    """Refuse JSON nested deeper than `limit` (walked without recursion)."""
    level = [value]
    for depth in range(limit + 1):
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)]
        if not level:
            return
    raise CNIError(DECODE_FAILURE, "network config is nested too deeply", f"at most {limit} levels")


def check_count(items: list, limit: int, what: str):
    if len(items) > limit:
        raise config_error(f"too many {what}: {len(items)}", f"at most {limit}")


def read_small_file(path: str, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most `limit`; anything else (FIFO, device, directory) is refused
    without blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot read {what} {path}", e.strerror or str(e)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CNIError(IO_FAILURE, f"{what} {path} is not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise CNIError(IO_FAILURE, f"{what} {path} is larger than {limit} bytes")
    return data
