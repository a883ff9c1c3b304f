"""Hand one CNI call to the node daemon. Standard library only, and only modules that cost nothing to
import (no json, base64, re or enum on the normal path): every plugin call pays for what this imports.

Wire format, one connection per call. A message is a list of byte strings (fields), sent as a frame:
4-byte big-endian payload length, then each field as a 4-byte big-endian length and its bytes.
  daemon -> client  greeting  [b"podplumb/1"]                   sent once the daemon took the connection
  client -> daemon  request   [module, stdin, key1, value1, ...] the environment as key/value fields
  daemon -> client  reply     [exit code (ASCII digits), stdout, stderr]

The client sends its request only after the greeting: until then nothing has been asked, so any failure
(no socket, a stale socket file, a daemon too busy or stopped to greet) means "run in-process". Once
the request is sent the daemon may be acting on it; a failure from then on is answered with CNI error
11 (try again later), never retried here and never waited on without a bound.
"""

import os
import sys
import time
# The C module behind `socket`: `import socket` would also import enum, selectors and friends.
from _socket import AF_UNIX, SOCK_STREAM, socket as _unix_socket, timeout as SocketTimeout

DEFAULT_SOCKET = "/run/podplumb/cni.sock"
GREETING = b"podplumb/1"
CONNECT_TIMEOUT = 1.0          # connect + greeting
REQUEST_TIMEOUT = 120.0        # the whole call; env PODPLUMB_DAEMON_TIMEOUT overrides (seconds)
TIMEOUT_ENV = "PODPLUMB_DAEMON_TIMEOUT"
MAX_FRAME = 64 << 20
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


def forward(socket_path: str, module: str, env: dict, stdin: bytes) -> tuple[bytes, int] | None:
    """Serve a call through the daemon: (stdout, exit code), or None when the caller must run it itself."""
    sock = _connect(socket_path)
    if sock is None:
        return None
    env = dict(env)
    if env.get("CNI_NETNS"):       # the daemon's working directory is not ours
        env["CNI_NETNS"] = os.path.abspath(env["CNI_NETNS"])
    timeout = _request_timeout(env)
    try:
        sock.settimeout(timeout)
        send_message(sock, encode_request(module, env, stdin))
        code, output, stderr = recv_message(sock, time.monotonic() + timeout)
        code = int(code)
    except SocketTimeout:
        return _try_again(stdin, f"the node daemon at {socket_path} did not answer within {timeout:g}s")
    except (OSError, FrameError, ValueError) as e:     # ValueError: not three fields, or no number
        return _try_again(stdin, f"the node daemon at {socket_path} failed during the call: {e}")
    finally:
        sock.close()
    if stderr:
        sys.stderr.buffer.write(stderr)
        sys.stderr.flush()
    return output, code


def _connect(socket_path: str):
    """A connection the daemon has greeted, or None (nothing was asked of it)."""
    sock = _unix_socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(socket_path)
        greeting = recv_message(sock, time.monotonic() + CONNECT_TIMEOUT)
        if greeting != [GREETING]:
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
