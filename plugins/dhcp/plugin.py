"""dhcp IPAM: the pod's address from a DHCP server of its network. The lease is acquired, renewed and
released by the lease service of `podplumb daemon` (plugins.dhcp.service), as the reference's `dhcp`
plugin asks its `dhcp daemon`; this plugin only forwards each call there.

The service's socket: `ipam.daemonSocketPath` (the reference's key), else $PODPLUMB_DHCP_SOCKET (which
the installed executable sets to the one beside its install-time daemon socket, and the daemon to its
own), else /run/podplumb/cni-dhcp.sock (where `podplumb daemon` serves it by default).
"""

import ipaddress
import os
import socket

from cni import log, result as results, skel
from cni.errors import CNIError, CHECK_FAILED, INVALID_CONFIG, IO_FAILURE, NOT_AVAILABLE, TRY_AGAIN_LATER

from plugins.dhcp import protocol


SOCKET_ENV = "PODPLUMB_DHCP_SOCKET"      # podplumb.client.DHCP_SOCKET_ENV (not imported: plugins stand alone)
CALL_TIMEOUT = 60.0       # the service gives up acquiring after 20 s
HOW_TO_START = ("start the lease service with `podplumb daemon` (it serves DHCP leases on --dhcp-socket, "
                "by default /run/podplumb/cni-dhcp.sock next to its CNI socket), or point "
                "ipam.daemonSocketPath at the one that runs")


class NoService(Exception):
    pass


def add(request: skel.Request) -> dict:
    try:
        fd = os.open(request.netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot open network namespace {request.netns}", e.strerror) from None
    try:
        reply = _ask_or_fail(request, _message(request, "ADD",
                                               hostname=request.args.get("K8S_POD_NAME") or None), fd)
    finally:
        os.close(fd)
    return _result(reply["lease"])


def _result(lease: dict) -> dict:
    interface = ipaddress.ip_interface(f"{lease['ip']}/{lease['prefixlen']}")
    router = next(iter(lease.get("routers") or []), None)
    ip = {"address": str(interface)}
    routes = []
    if router:
        ip["gateway"] = router
        routes.append({"dst": "0.0.0.0/0", "gw": router})
    dns = {}
    if lease.get("name_servers"):
        dns["nameservers"] = lease["name_servers"]
    if lease.get("domain"):
        dns["domain"] = lease["domain"]
    return results.new(ips=[ip], routes=routes, dns=dns or None)


def delete(request: skel.Request):
    try:
        _ask(request, _message(request, "DEL"))
    except NoService as e:   # the leases lived in that service's memory: there is nothing left to release
        log.logger().warning("dhcp DEL: %s; nothing to release", e)


def check(request: skel.Request):
    lease = _ask_or_fail(request, _message(request, "CHECK"))["lease"]
    prev = request.config.get("prevResult")
    if prev:
        addresses = {ipaddress.ip_interface(ip["address"]).ip for ip in results.from_any(prev, request.version)["ips"]}
        if ipaddress.ip_address(lease["ip"]) not in addresses:
            raise CNIError(CHECK_FAILED, f"the DHCP lease is for {lease['ip']}, not an address of prevResult")


def status(request: skel.Request):
    try:
        _ask(request, {"command": "STATUS"})
    except NoService as e:
        raise CNIError(NOT_AVAILABLE, str(e), HOW_TO_START) from None


def gc(request: skel.Request):
    valid = [a for a in request.config.get("cni.dev/valid-attachments") or [] if isinstance(a, dict)]
    try:
        _ask(request, {"command": "GC", "network": request.network, "valid": valid})
    except NoService as e:
        log.logger().warning("dhcp GC: %s; nothing to collect", e)


def _message(request: skel.Request, command: str, **extra) -> dict:
    return {"command": command, "network": request.network, "containerID": request.container_id,
            "ifname": request.ifname, **extra}


def _ask_or_fail(request: skel.Request, message: dict, fd: int | None = None) -> dict:
    try:
        return _ask(request, message, fd)
    except NoService as e:
        raise CNIError(TRY_AGAIN_LATER, str(e), HOW_TO_START) from None


def _ask(request: skel.Request, message: dict, fd: int | None = None) -> dict:
    path = socket_path(request)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CALL_TIMEOUT)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoService(f"no DHCP lease service listens on {path}") from None
        try:
            protocol.send(sock, message, [fd] if fd is not None else [])
            reply, _ = protocol.receive(sock)
        except (OSError, protocol.ProtocolError) as e:
            raise CNIError(TRY_AGAIN_LATER, f"the DHCP lease service at {path} failed during the call",
                           str(e)) from None
    finally:
        sock.close()
    if "error" in reply:
        raise CNIError.from_dict(reply["error"])
    return reply


def socket_path(request: skel.Request) -> str:
    ipam = request.config.get("ipam") if isinstance(request.config.get("ipam"), dict) else {}
    # The caller's environment, else ours: the launcher and the daemon set it to the daemon's own.
    path = (ipam.get("daemonSocketPath") or request.env.get(SOCKET_ENV) or os.environ.get(SOCKET_ENV)
            or protocol.DEFAULT_SOCKET)
    if not isinstance(path, str) or not os.path.isabs(path):
        raise CNIError(INVALID_CONFIG, f"invalid ipam.daemonSocketPath {path!r}", "an absolute path")
    return path


PLUGIN = skel.Plugin(name="dhcp", add=add, delete=delete, check=check, status=status, gc=gc)
