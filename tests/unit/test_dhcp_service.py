"""The DHCP lease service's answers to requests that need no DHCP server, over its real socket."""

import os
import socket
import tempfile
import time

import pytest

from plugins.dhcp import protocol
from plugins.dhcp.service import LeaseService


@pytest.fixture
def service():
    directory = tempfile.mkdtemp(prefix="ppdh-")
    path = os.path.join(directory, "dhcp.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    running = LeaseService(listener, path).start()
    yield path
    running.stop()
    assert not os.path.exists(path)
    os.rmdir(directory)


def ask(path, message, fds=()):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        protocol.send(sock, message, fds)
        reply, _ = protocol.receive(sock)
    return reply


ATTACHMENT = {"network": "net", "containerID": "ctr", "ifname": "eth0"}


@pytest.mark.parametrize("message, code, text", [
    ([1, 2], 6, "JSON object"),
    ({"command": "ADD", "network": "net"}, 4, "containerID"),
    ({"command": "ADD", **ATTACHMENT}, 4, "network namespace"),
    ({"command": "EXPLODE", **ATTACHMENT}, 4, "EXPLODE"),
    ({"command": "CHECK", **ATTACHMENT}, 105, "no DHCP lease"),
])
def test_bad_requests(service, message, code, text):
    error = ask(service, message)["error"]
    assert error["code"] == code and text in error["msg"], error


def test_del_gc_status_of_nothing_succeed(service):
    assert ask(service, {"command": "DEL", **ATTACHMENT}) == {"ok": True}
    assert ask(service, {"command": "GC", "network": "net", "valid": []}) == {"ok": True, "released": 0}
    assert ask(service, {"command": "STATUS"}) == {"ok": True}


def test_a_passed_descriptor_is_closed_when_unused(service):
    """The service runs in this process: the copy of the pipe it received must go, and with it the
    pipe's write end's last reader but ours."""
    r, w = os.pipe()
    try:
        before = _pipe_readers(r)
        for _ in range(3):
            ask(service, {"command": "DEL", **ATTACHMENT}, [r])
        deadline = time.monotonic() + 5       # the service's thread closes its copy after answering
        while _pipe_readers(r) > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _pipe_readers(r) == before
    finally:
        os.close(r)
        os.close(w)


def _pipe_readers(fd: int) -> int:
    """How many descriptors of this process refer to the same pipe end as `fd`."""
    target = os.readlink(f"/proc/self/fd/{fd}")
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == target
        except OSError:
            pass
    return count
