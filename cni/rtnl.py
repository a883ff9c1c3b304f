"""A small synchronous rtnetlink client: requests answered by an ack, single gets, and dumps the
kernel filters. Standard library only.

Why not pyroute2 here: pyroute2 0.9's IPRoute runs every request through an asyncio event loop
(about 1.5 ms each, and a bridge ADD makes about sixteen) and costs about 170 ms to import. A plugin
call needs a dozen message kinds; this module builds and reads those few.

Dumps carry their filter in the request's header, with NETLINK_GET_STRICT_CHK on, so the kernel
sends only what matches (kernel >= 4.20; older kernels ignore the filter, and the callers check
what comes back anyway): on a node with hundreds of veths, one link's addresses or routes never
cost a transfer of everyone's.
"""

import errno
import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
AF_UNSPEC, AF_INET, AF_BRIDGE, AF_INET6 = 0, 2, 7, 10

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_PROTINFO, IFLA_TXQLEN, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_AF_SPEC, IFLA_NET_NS_FD, IFLA_EXT_MASK = \
    12, 13, 18, 20, 26, 28, 29
IFLA_INET_CONF = 1
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_DATA = 1, 2, 5
IFLA_BRPORT_MODE, IFLA_BRPORT_ISOLATED = 4, 33
IFLA_MACVLAN_MODE = 1
VETH_INFO_PEER = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 3, 0, 1

_HEADER = struct.Struct("=LHHLL")          # nlmsghdr: length, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")       # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBi")        # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")        # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")
_ERROR = struct.Struct("=i")
_RECV_SIZE = 1 << 17


class KernelError(OSError):
    """The kernel refused a request: `code` is the errno."""

    @property
    def code(self) -> int:
        return self.errno


# ---- attributes ---------------------------------------------------------------------------------

def attr(kind: int, data: bytes) -> bytes:
    length = _RTATTR.size + len(data)
    return _RTATTR.pack(length, kind) + data + b"\0" * (-length % 4)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind, b"".join(attrs))


def u8(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=B", value))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def mac(kind: int, value: str) -> bytes:
    return attr(kind, bytes.fromhex(value.replace(":", "")))


def ip(kind: int, value) -> bytes:
    return attr(kind, ipaddress.ip_address(value).packed)


def parse(data: bytes) -> dict[int, bytes]:
    """Attributes by kind (flags stripped; the first of a repeated kind)."""
    out, at = {}, 0
    while at + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, at)
        if length < _RTATTR.size:
            break
        out.setdefault(kind & 0x3FFF, data[at + _RTATTR.size:at + length])
        at += (length + 3) & ~3
    return out


def as_u32(data: bytes | None, default: int = 0) -> int:
    return struct.unpack_from("=I", data)[0] if data else default


def as_string(data: bytes | None) -> str:
    return data.split(b"\0", 1)[0].decode(errors="replace") if data else ""


def as_mac(data: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in data) if data else ""


def as_ip(data: bytes) -> str:
    return str(ipaddress.ip_address(data))


# ---- the socket ---------------------------------------------------------------------------------

class Socket:
    """One rtnetlink socket: of this process's network namespace, or `sock` opened in another one."""

    def __init__(self, sock: socket.socket | None = None):
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        self._seq = 0

    def close(self):
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, msg_type: int, body: bytes, flags: int = 0):
        """Send one request and wait for its ack; KernelError when the kernel refuses it."""
        self._exchange(msg_type, NLM_F_ACK | flags, body)

    def get(self, msg_type: int, body: bytes) -> bytes:
        """The one message answering a get request (a link by index or name)."""
        return self._exchange(msg_type, 0, body)[0]

    def dump(self, msg_type: int, body: bytes) -> list[bytes]:
        return self._exchange(msg_type, NLM_F_DUMP, body)

    def batch(self, messages) -> tuple[int, int] | None:
        """Send `messages` ((type, flags, body) each) in one write, as nfnetlink takes a transaction:
        the kernel has handled them all before the write returns, and answers only what it refused.
        -> (index of the first refused message, errno), None when the kernel took them all."""
        seqs = {}
        chunks = []
        for index, (msg_type, flags, body) in enumerate(messages):
            seq, chunk = self._framed(msg_type, flags, body)
            seqs[seq] = index
            chunks.append(chunk)
        self.sock.send(b"".join(chunks))
        refused = []
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0)
        try:
            while True:
                try:
                    data = self.sock.recv(_RECV_SIZE)
                except BlockingIOError:
                    break
                for kind, _, payload in _messages(data):
                    if kind == NLMSG_ERROR and (error := -_ERROR.unpack_from(payload)[0]):
                        seq = _HEADER.unpack_from(payload, _ERROR.size)[3]
                        if seq in seqs:
                            refused.append((seqs[seq], error))
        finally:
            self.sock.settimeout(timeout)
        return min(refused) if refused else None

    def _framed(self, msg_type: int, flags: int, body: bytes) -> tuple[int, bytes]:
        """(sequence number, the request with its netlink header)."""
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq, _HEADER.pack(_HEADER.size + len(body), msg_type, NLM_F_REQUEST | flags, self._seq, 0) + body

    def _exchange(self, msg_type: int, flags: int, body: bytes) -> list[bytes]:
        seq, request = self._framed(msg_type, flags, body)
        self.sock.send(request)
        bodies = []
        while True:
            for kind, msg_seq, payload in _messages(self.sock.recv(_RECV_SIZE)):
                if msg_seq != seq:
                    continue      # a late answer to an earlier request (one that raised)
                if kind == NLMSG_DONE:
                    return bodies
                if kind == NLMSG_ERROR:
                    error = -_ERROR.unpack_from(payload)[0]
                    if error:
                        raise KernelError(error, os.strerror(error))
                    return bodies
                bodies.append(payload)
                if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                    return bodies


def _messages(data: bytes):
    """(type, sequence number, payload) of each netlink message in one datagram."""
    at = 0
    while at + _HEADER.size <= len(data):
        length, kind, _, seq, _ = _HEADER.unpack_from(data, at)
        if length < _HEADER.size:
            raise KernelError(errno.EPROTO, "malformed netlink message")
        yield kind, seq, data[at + _HEADER.size:at + length]
        at += (length + 3) & ~3


# ---- messages podplumb reads --------------------------------------------------------------------

def link_request(index: int = 0, name: str | None = None) -> bytes:
    """A get of one link, by index or name, without its statistics."""
    body = IFINFOMSG.pack(AF_UNSPEC, 0, index, 0, 0) + u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    return body + (string(IFLA_IFNAME, name) if name and not index else b"")


def ports_request(master: int) -> bytes:
    """A dump of the links enslaved to `master`."""
    return link_request() + u32(IFLA_MASTER, master)


def addresses(sock: Socket, family: int, index: int) -> list[tuple[str, int, int]]:
    """(address, prefix length, flags) of link `index` in `family`."""
    out = []
    for body in sock.dump(RTM_GETADDR, IFADDRMSG.pack(family, 0, 0, 0, index)):
        fam, prefixlen, flags, _, ifindex = IFADDRMSG.unpack_from(body)
        if ifindex != index or fam != family:
            continue
        attrs = parse(body[IFADDRMSG.size:])
        raw = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
        if raw is None:
            continue
        out.append((as_ip(raw), prefixlen, as_u32(attrs.get(IFA_FLAGS), flags)))
    return out


def routes(sock: Socket, family: int, table: int, oif: int | None = None) -> list[tuple[str, str | None, int]]:
    """(dst CIDR, gateway or None, oif) of `table` in `family`, only those through `oif` if given."""
    request = RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, 0, 0, 0, 0) + u32(RTA_TABLE, table)
    if oif is not None:
        request += u32(RTA_OIF, oif)
    out = []
    for body in sock.dump(RTM_GETROUTE, request):
        fam, dst_len, *_ = RTMSG.unpack_from(body)
        attrs = parse(body[RTMSG.size:])
        route_table = as_u32(attrs.get(RTA_TABLE), body[4])
        route_oif = as_u32(attrs.get(RTA_OIF))
        if fam != family or route_table != table or (oif is not None and route_oif != oif):
            continue
        dst = as_ip(attrs[RTA_DST]) if RTA_DST in attrs else ("0.0.0.0" if family == AF_INET else "::")
        gateway = as_ip(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None
        out.append((f"{dst}/{dst_len}", gateway, route_oif))
    return out
