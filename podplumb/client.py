"""Hand one CNI call to the node daemon. Standard library only, and only modules that cost nothing to
import (no json, base64, re or enum on the normal path): every plugin call pays for what this imports.

Wire format, one connection per call (docs/daemon.md). A message is a list of byte strings (fields),
sent as a frame: 4-byte big-endian payload length, then each field as a 4-byte big-endian length and
its bytes.
  daemon -> client  greeting  [b"podplumb/1"]                   sent once the daemon took the connection
  client -> daemon  request   [module, stdin, key1, value1, ...] the environment as key/value fields;
                    its first bytes carry (SCM_RIGHTS) the caller's /proc/self/ns/net, ns/mnt and root
  daemon -> client  reply     [exit code (ASCII digits), stdout, stderr]

The client sends its request only after the greeting: until then nothing has been asked, so any failure
(no socket, a stale socket file, a daemon too busy or stopped to greet) means "run in-process". A
daemon that does not greet within GREETING_TIMEOUT is marked stalled (`<socket>.stalled`): for
STALL_BACKOFF seconds later calls do not ask it at all. Once the request is sent the daemon may be
acting on it; a failure from then on is answered with CNI error 11 (try again later), never retried
here and never waited on without a bound.
"""

import os
import sys
import time
# The C module behind `socket`: `import socket` would also import enum, selectors and friends.
from _socket import (AF_UNIX, SCM_RIGHTS, SO_PEERCRED, SOCK_STREAM, SOL_SOCKET, socket as _unix_socket,
                     timeout as SocketTimeout)

from cni.limits import MAX_CONFIG_BYTES

DEFAULT_SOCKET = "/run/podplumb/cni.sock"
GREETING = b"podplumb/1"
GREETING_TIMEOUT = 0.2         # connect + greeting: what a stopped daemon costs a caller, once
BUSY_GREETING_TIMEOUT = 2.0    # ... and one that runs but is slow to greet (a loaded machine)
CONNECT_TIMEOUT = GREETING_TIMEOUT
STALL_BACKOFF = 10.0           # seconds during which a daemon that did not greet is not asked again
STALLED_SUFFIX = ".stalled"
DHCP_SOCKET_ENV = "PODPLUMB_DHCP_SOCKET"    # where the dhcp plugin finds the daemon's DHCP lease service
REQUEST_TIMEOUT = 120.0        # the whole call; env PODPLUMB_DAEMON_TIMEOUT overrides (seconds)
TIMEOUT_ENV = "PODPLUMB_DAEMON_TIMEOUT"
MAX_ENV_BYTES = 1 << 20        # the environment's share of a request
MAX_REQUEST = MAX_CONFIG_BYTES + MAX_ENV_BYTES
MAX_FRAME = 64 << 20
CALLER_NAMESPACES = ("/proc/self/ns/net", "/proc/self/ns/mnt", "/proc/self/root")   # passed with the request, in this order
TRY_AGAIN_LATER = 11
FALLBACK_VERSION = "1.1.0"


class FrameError(Exception):
    """The peer closed the connection or sent something that is not a frame."""


def encode(fields) -> bytes:
    payload = b"".join(len(f).to_bytes(4, "big") + f for f in fields)
    return len(payload).to_bytes(4, "big") + payload


def decode(payload: bytes) -> list[bytes]:
    fields, at = [], 0
    while at < len(payload):
        if at + 4 > len(payload):
            raise FrameError("truncated field header")
        size = int.from_bytes(payload[at:at + 4], "big")
        at += 4
        if at + size > len(payload):
            raise FrameError("truncated field")
        fields.append(payload[at:at + size])
        at += size
    return fields


def send_message(sock, fields) -> None:
    sock.sendall(encode(fields))


def recv_message(sock, deadline: float) -> list[bytes]:
    size = int.from_bytes(_recv_exactly(sock, 4, deadline), "big")
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes is larger than {MAX_FRAME}")
    return decode(_recv_exactly(sock, size, deadline))


def _recv_exactly(sock, size: int, deadline: float) -> bytes:
    chunks, left = [], size
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SocketTimeout("timed out")
        sock.settimeout(remaining)
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise FrameError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def encode_request(module: str, env: dict, stdin: bytes) -> list[bytes]:
    fields = [module.encode(), stdin]
    for key, value in env.items():
        fields += (os.fsencode(key), os.fsencode(value))
    return fields


def rights(fds) -> list:
    """The ancillary data that passes the file descriptors `fds` (SCM_RIGHTS)."""
    return [(SOL_SOCKET, SCM_RIGHTS, b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))] if fds else []


def send_request(sock, fields, fds) -> None:
    """The request frame, the file descriptors `fds` riding on its first bytes."""
    data = encode(fields)
    sent = sock.sendmsg([data[:1 << 16]], rights(fds))
    if sent < len(data):        # (a daemon that answered at once may have closed already)
        sock.sendall(data[sent:])


def caller_namespaces() -> list[int]:
    """This process's network and mount namespaces and root directory, for the daemon to work in."""
    fds = []
    try:
        for path in CALLER_NAMESPACES:
            fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def forward(socket_path: str, module: str, env: dict, stdin: bytes) -> tuple[bytes, int] | None:
    """Serve a call through the daemon: (stdout, exit code), or None when the caller must run it itself."""
    env = dict(env)
    if env.get("CNI_NETNS"):       # the daemon's working directory is not ours
        env["CNI_NETNS"] = os.path.abspath(env["CNI_NETNS"])
    fields = encode_request(module, env, stdin)
    if len(stdin) > MAX_CONFIG_BYTES or sum(map(len, fields)) - len(stdin) > MAX_ENV_BYTES:
        return None                # the in-process answer says which bound it passed
    if _stalled(socket_path):
        return None
    sock = _connect(socket_path)
    if sock is None:
        return None
    timeout = request_timeout(env)
    try:
        fds = caller_namespaces()
    except OSError:                 # no /proc here: the daemon then finds them through our pid
        fds = []
    try:
        sock.settimeout(timeout)
        send_request(sock, fields, fds)
        code, output, stderr = recv_message(sock, time.monotonic() + timeout)
        code = int(code)
    except SocketTimeout:
        return _try_again(stdin, f"the node daemon at {socket_path} did not answer within {timeout:g}s")
    except (OSError, FrameError, ValueError) as e:     # ValueError: not three fields, or no number
        return _try_again(stdin, f"the node daemon at {socket_path} failed during the call: {e}")
    finally:
        sock.close()
        for fd in fds:
            os.close(fd)
    if stderr:
        sys.stderr.buffer.write(stderr)
        sys.stderr.flush()
    return output, code


def _connect(socket_path: str):
    """A connection the daemon has greeted, or None (nothing was asked of it)."""
    sock = _unix_socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.settimeout(GREETING_TIMEOUT)
        sock.connect(socket_path)
        try:
            greeting = recv_message(sock, time.monotonic() + GREETING_TIMEOUT)
        except SocketTimeout:
            if not daemon_running(sock):
                raise
            greeting = recv_message(sock, time.monotonic() + BUSY_GREETING_TIMEOUT - GREETING_TIMEOUT)
        if greeting != [GREETING]:
            raise FrameError(f"unexpected greeting {greeting!r}")
        return sock
    except (FileNotFoundError, ConnectionRefusedError):   # no daemon, or a stale socket file
        sock.close()
        return None
    except SocketTimeout:
        sock.close()
        _mark_stalled(socket_path)
        sys.stderr.write(f"podplumb: node daemon at {socket_path} did not greet in time; "
                         f"running in-process, and not asking it again for {STALL_BACKOFF:g}s\n")
        return None
    except (OSError, FrameError) as e:
        sock.close()
        sys.stderr.write(f"podplumb: node daemon at {socket_path} unusable ({e}); running in-process\n")
        return None


def daemon_running(sock) -> bool:
    """Whether the process listening on `sock` (SO_PEERCRED) is running, not stopped, dead or unknown:
    a running daemon slow to greet (a loaded machine) is waited for a little longer."""
    pid = int.from_bytes(sock.getsockopt(SOL_SOCKET, SO_PEERCRED, 12)[:4], sys.byteorder)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return pid > 0 and state in (b"R", b"S", b"D")


def _stalled(socket_path: str) -> bool:
    """Whether a recent call found the daemon stalled (then this call does not pay the wait again)."""
    try:
        marked = os.stat(socket_path + STALLED_SUFFIX).st_mtime
    except OSError:
        return False
    return 0 <= time.time() - marked < STALL_BACKOFF


def _mark_stalled(socket_path: str):
    try:
        fd = os.open(socket_path + STALLED_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    with open(fd, "w") as f:
        f.write(f"{time.time():.3f}\n")


def request_timeout(env: dict) -> float:
    try:
        value = float(env.get(TIMEOUT_ENV, ""))
    except ValueError:
        return REQUEST_TIMEOUT
    return value if value > 0 else REQUEST_TIMEOUT


def _try_again(stdin: bytes, details: str) -> tuple[bytes, int]:
    return error_reply(stdin, TRY_AGAIN_LATER,
                       "the podplumb node daemon did not complete the call; try again later", details)


def error_reply(stdin: bytes, code: int, msg: str, details: str) -> tuple[bytes, int]:
    """A CNI error object as a plugin prints it, in the version the call's config asks for."""
    import json       # only on this rare path
    error = {"cniVersion": config_version(stdin), "code": code, "msg": msg, "details": details}
    return (json.dumps(error, indent=2) + "\n").encode(), 1


def config_version(stdin: bytes) -> str:
    """The config's cniVersion if it is one, else the newest version."""
    import json
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return FALLBACK_VERSION
    parts = version.split(".") if isinstance(version, str) else []
    return version if len(parts) == 3 and all(p.isdigit() for p in parts) else FALLBACK_VERSION


def dhcp_socket(daemon_socket: str) -> str:
    """The DHCP lease service's socket of the daemon serving `daemon_socket`: beside it, <name>-dhcp.sock."""
    base = daemon_socket[:-len(".sock")] if daemon_socket.endswith(".sock") else daemon_socket
    return base + "-dhcp.sock"
