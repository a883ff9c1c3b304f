"""The dhcp plugin <-> lease service messages on a unix socket: one JSON object each way, 4-byte
big-endian length first; the request may carry the pod's network namespace as a file descriptor
(SCM_RIGHTS), so the service needs no path that only the caller's mount namespace can resolve."""

import json
import socket

DEFAULT_SOCKET = "/run/podplumb/cni-dhcp.sock"
MAX_MESSAGE = 8 << 20


class ProtocolError(Exception):
    pass


def send(sock: socket.socket, obj, fds=()):
    data = json.dumps(obj).encode()
    frame = len(data).to_bytes(4, "big") + data
    if fds:
        sent = socket.send_fds(sock, [frame], list(fds))
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


def receive(sock: socket.socket, with_fds: bool = False):
    """(object, [fds]) — the fds only when `with_fds`."""
    fds = []
    if with_fds:
        head, fds, _, _ = socket.recv_fds(sock, 4, 4)
    else:
        head = sock.recv(4)
    head += _exactly(sock, 4 - len(head))
    size = int.from_bytes(head, "big")
    if size > MAX_MESSAGE:
        raise ProtocolError(f"message of {size} bytes is too large")
    try:
        return json.loads(_exactly(sock, size)), fds
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from None


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ProtocolError("connection closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
