"""rtnetlink dumps the kernel filters (a bridge's ports, one link's addresses, one table's routes).

pyroute2 sends dump requests with an empty header and filters what comes back in Python: on a
node with hundreds of veths (an IPv6 link-local address and route each) one link's addresses or
routes cost a transfer and a decode of everything. Here the request's header carries the filter and
the socket has NETLINK_GET_STRICT_CHK on for the request, so the kernel sends only what matches
(kernel >= 4.20; older kernels ignore the filter, and the caller's own check still applies).
Only the few attributes podplumb reads are decoded.
"""

import contextlib
import ipaddress
import os
import socket
import struct

SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE = 18, 22, 26
IFLA_MASTER = 10
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
_HEADER = struct.Struct("=LHHLL")          # nlmsghdr
_IFINFOMSG = struct.Struct("=BxHiII")      # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBi")       # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")       # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")
_SEQ = iter(range(0x70000000, 0x7fffffff))


def ports(fd: int, master: int) -> list[int]:
    """The ifindexes of the links enslaved to `master` (a bridge)."""
    request = _IFINFOMSG.pack(0, 0, 0, 0, 0) + _attribute(IFLA_MASTER, struct.pack("=I", master))
    out = []
    for body in _dump(fd, RTM_GETLINK, request):
        index = _IFINFOMSG.unpack_from(body)[2]
        attrs = _attributes(body[_IFINFOMSG.size:])
        if IFLA_MASTER in attrs and struct.unpack_from("=I", attrs[IFLA_MASTER])[0] == master:
            out.append(index)
    return out


def addresses(fd: int, family: int, index: int) -> list[tuple[str, int, int]]:
    """(address, prefix length, flags) of link `index` in `family`."""
    request = _IFADDRMSG.pack(family, 0, 0, 0, index)
    out = []
    for body in _dump(fd, RTM_GETADDR, request):
        fam, prefixlen, flags, _, ifindex = _IFADDRMSG.unpack_from(body)
        if ifindex != index or fam != family:
            continue
        attrs = _attributes(body[_IFADDRMSG.size:])
        raw = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
        if raw is None:
            continue
        if IFA_FLAGS in attrs:
            flags = struct.unpack_from("=I", attrs[IFA_FLAGS])[0]
        out.append((str(ipaddress.ip_address(raw)), prefixlen, flags))
    return out


def routes(fd: int, family: int, table: int, oif: int | None = None) -> list[tuple[str, str | None, int]]:
    """(dst CIDR, gateway or None, oif) of `table` in `family`, only those through `oif` if given."""
    request = _RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, 0, 0, 0, 0)
    request += _attribute(RTA_TABLE, struct.pack("=I", table))
    if oif is not None:
        request += _attribute(RTA_OIF, struct.pack("=i", oif))
    out = []
    for body in _dump(fd, RTM_GETROUTE, request):
        fam, dst_len, *_ = _RTMSG.unpack_from(body)
        attrs = _attributes(body[_RTMSG.size:])
        route_table = struct.unpack_from("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else body[4]
        route_oif = struct.unpack_from("=i", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
        if fam != family or route_table != table or (oif is not None and route_oif != oif):
            continue
        dst = str(ipaddress.ip_address(attrs[RTA_DST])) if RTA_DST in attrs else ("0.0.0.0" if family == 2 else "::")
        gateway = str(ipaddress.ip_address(attrs[RTA_GATEWAY])) if RTA_GATEWAY in attrs else None
        out.append((f"{dst}/{dst_len}", gateway, route_oif))
    return out


def _attribute(kind: int, data: bytes) -> bytes:
    length = _RTATTR.size + len(data)
    return _RTATTR.pack(length, kind) + data + b"\0" * (-length % 4)


def _attributes(data: bytes) -> dict[int, bytes]:
    out, at = {}, 0
    while at + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, at)
        if length < _RTATTR.size:
            break
        out.setdefault(kind & 0x3FFF, data[at + _RTATTR.size:at + length])
        at += (length + 3) & ~3
    return out


def _dump(fd: int, msg_type: int, request: bytes) -> list[bytes]:
    """Send one dump request on the rtnetlink socket `fd` (strict checking on meanwhile) and return
    the bodies of its answers. The socket is another object's (pyroute2's): it is borrowed, never
    closed, and the whole answer is read so that nothing of it is left for the owner."""
    seq = next(_SEQ)
    sock = socket.socket(fileno=os.dup(fd))
    bodies = []
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        sock.send(_HEADER.pack(_HEADER.size + len(request), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + request)
        while True:
            data = sock.recv(1 << 16)
            at = 0
            while at + _HEADER.size <= len(data):
                length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, at)
                if length < _HEADER.size:
                    return bodies
                body = data[at + _HEADER.size:at + length]
                at += (length + 3) & ~3
                if msg_seq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return bodies
                if kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", body)[0]
                    if error:
                        raise OSError(error, os.strerror(error))
                    return bodies
                bodies.append(body)
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 0)
        sock.close()
