"""Hand one CNI call to the node daemon. Standard library only: every plugin call imports this.

Wire format (one connection per call), each message a frame: 4-byte big-endian length, then JSON.
  daemon -> client  greeting  {"podplumb": 1}        sent once the daemon has taken the connection
  client -> daemon  request   {"module", "env", "stdin" (base64)}
  daemon -> client  reply     {"stdout" (base64), "stderr" (text), "code"}

The client sends the request only after the greeting: until then nothing has been asked, so any
failure (no socket, stale socket, a daemon too busy or stopped to greet) means "run in-process".
Once the request is sent, the daemon may be acting on it; a failure from then on is reported as
CNI error 11 (try again later), never retried here and never waited on without a bound.
"""

import base64
import json
import os
import socket
import struct
import sys
import time

CONNECT_TIMEOUT = 1.0          # connect + greeting
REQUEST_TIMEOUT = 120.0        # the whole call; env PODPLUMB_DAEMON_TIMEOUT overrides (seconds)
TIMEOUT_ENV = "PODPLUMB_DAEMON_TIMEOUT"
MAX_FRAME = 64 << 20
TRY_AGAIN_LATER = 11
FALLBACK_VERSION = "1.1.0"

_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """The peer closed the connection or sent something that is not a frame."""


def send_frame(sock: socket.socket, obj) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def recv_frame(sock: socket.socket, deadline: float | None = None):
    (length,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size, deadline))
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes is larger than {MAX_FRAME}")
    try:
        return json.loads(_recv_exactly(sock, length, deadline))
    except ValueError as e:
        raise FrameError(f"frame is not JSON: {e}") from None


def _recv_exactly(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            sock.settimeout(remaining)
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise FrameError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def forward(socket_path: str, module: str, env: dict, stdin: bytes) -> tuple[bytes, int] | None:
    """Serve a call through the daemon: (stdout, exit code), or None when the caller must run it itself."""
    sock = _connect(socket_path)
    if sock is None:
        return None
    with sock:
        env = dict(env)
        if env.get("CNI_NETNS"):     # the daemon's working directory is not ours
            env["CNI_NETNS"] = os.path.abspath(env["CNI_NETNS"])
        request = {"module": module, "env": env, "stdin": base64.b64encode(stdin).decode()}
        deadline = time.monotonic() + _request_timeout(env)
        try:
            send_frame(sock, request)
            reply = recv_frame(sock, deadline)
            output, code = base64.b64decode(reply["stdout"]), int(reply["code"])
            stderr = reply.get("stderr") or ""
        except socket.timeout:
            return _try_again(stdin, f"the node daemon at {socket_path} did not answer within "
                                     f"{_request_timeout(env):g}s")
        except (OSError, FrameError, KeyError, TypeError, ValueError) as e:
            return _try_again(stdin, f"the node daemon at {socket_path} failed during the call: {e}")
    if stderr:
        sys.stderr.write(stderr)
    return output, code


def _connect(socket_path: str) -> socket.socket | None:
    """A connection the daemon has greeted, or None (nothing was asked of it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + CONNECT_TIMEOUT
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(socket_path)
        greeting = recv_frame(sock, deadline)
        if not isinstance(greeting, dict) or greeting.get("podplumb") != 1:
            raise FrameError(f"unexpected greeting {greeting!r}")
        return sock
    except (FileNotFoundError, ConnectionRefusedError):   # no daemon, or a stale socket file
        sock.close()
        return None
    except (OSError, FrameError) as e:
        sock.close()
        sys.stderr.write(f"podplumb: node daemon at {socket_path} unusable ({e}); running in-process\n")
        return None


def _request_timeout(env: dict) -> float:
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
    error = {"cniVersion": config_version(stdin), "code": code, "msg": msg, "details": details}
    return (json.dumps(error, indent=2) + "\n").encode(), 1


def config_version(stdin: bytes) -> str:
    """The config's cniVersion if it is one, else the newest version."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return FALLBACK_VERSION
    if isinstance(version, str) and len(version.split(".")) == 3 and \
            all(part.isdigit() for part in version.split(".")):
        return version
    return FALLBACK_VERSION
