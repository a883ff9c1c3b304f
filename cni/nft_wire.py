"""nf_tables netlink messages for the commands podplumb's nftables scripts hold.

`nft` (and libnftables) fetches the names of every chain of the namespace before a command that
adds a rule, deletes a chain or touches a map element, so a transaction's cost grows with the
node. Sending the transaction's messages ourselves costs the same whatever the node holds.

Only what podplumb writes is encoded here, in the `inet` and `bridge` families: tables, verdict
maps, chains, elements, and the rule texts its plugins build (see `rule_expressions` for the
grammar). For anything else `encode` raises Unsupported, and the caller hands the whole script to
nft instead. The bytes are those nft 1.0.6 sends for the same text (dependencies, byte-aligned
prefixes, registers), so `nft list` prints our rules as it prints its own: tests/netns/test_nft_wire.py
compares the two in the kernel. Pure encoding: sending is cni.nftables' job.
"""

import functools
import ipaddress
import itertools
import socket
import struct

from cni import rtnl

NFNL_SUBSYS_NFTABLES = 10
BATCH_BEGIN, BATCH_END = 0x10, 0x11
NLM_F_APPEND = 0x800
(NEWTABLE, GETTABLE, DELTABLE, NEWCHAIN, GETCHAIN, DELCHAIN, NEWRULE, GETRULE, DELRULE, NEWSET, _, _, NEWSETELEM,
 GETSETELEM, DELSETELEM) = ((NFNL_SUBSYS_NFTABLES << 8) | i for i in range(15))
FAMILIES = {"ip": 2, "ip6": 10, "inet": 1, "bridge": 7, "arp": 3, "netdev": 5}    # NFPROTO_*
ENCODED_FAMILIES = ("inet", "bridge")          # those whose commands `encode` knows
NFGENMSG = struct.Struct("=BBH")               # family, version, resource id: before a message's attributes

_HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
_VERDICTS = {"drop": 0, "accept": 1, "jump": -3, "goto": -4, "return": -5}
_L4 = {"tcp": 6, "udp": 17, "sctp": 132}
_NFPROTO = {"ipv4": 2, "ipv6": 10}
_IP_HEADERS = {"ip": ("ipv4", 4, {"saddr": 12, "daddr": 16}), "ip6": ("ipv6", 16, {"saddr": 8, "daddr": 24})}
_REG_VERDICT, _REG_1, _REG_2, _REG32_01 = 0, 1, 2, 9
_BASE_LINK, _BASE_NETWORK, _BASE_TRANSPORT = 0, 1, 2
_META_IIFNAME, _META_NFPROTO, _META_L4PROTO = 6, 15, 16
_CMP_EQ, _CMP_NEQ = 0, 1
_CT_STATUS, _IPS_DST_NAT = 2, 0x20
_FIB_RESULT_ADDRTYPE, _FIB_F_DADDR, _RTN_LOCAL = 3, 2, 2
_NAT_DNAT, _NAT_PROTO_SPECIFIED = 1, 2
_IFNAMSIZ = 16
_UDATA_COMMENT = 0       # a rule's user data: type-length-value entries; this type holds the comment

# Verdict maps by key type: nft's type id, key length, and the set user data nft 1.0.6 writes
# (key byte order and friends), so that `nft list` prints the map as one it made.
_UDATA_TAIL = bytes.fromhex("010400000000060400000000")
_MAP_KEYS = {
    "ipv4_addr": (7, 4, bytes.fromhex("000402000000") + _UDATA_TAIL),
    "ipv6_addr": (8, 16, bytes.fromhex("000402000000") + _UDATA_TAIL),
    "ifname": (41, _IFNAMSIZ, bytes.fromhex("000401000000") + _UDATA_TAIL),
    "inet_proto . inet_service": ((12 << 6) | 13, 8,
                                  bytes.fromhex("000400000000010400000000030800040d0000000100060400000000")),
}
_SET_MAP, _DATA_VERDICT, _VERDICT_LEN = 0x8, 0xFFFFFF00, 16
_SET_IDS = itertools.count(1)     # the kernel wants an ID for each new set of a transaction, its own


class Unsupported(ValueError):
    """A command or rule text this module does not encode: nft must do it."""


def be32(kind: int, value: int) -> bytes:
    return rtnl.attr(kind, struct.pack(">i" if value < 0 else ">I", value))


def _data(kind: int, value: bytes) -> bytes:
    return rtnl.nested(kind, rtnl.attr(1, value))                       # NFTA_DATA_VALUE


def _verdict(kind: int, verdict: str, chain: str | None = None) -> bytes:
    body = be32(1, _VERDICTS[verdict]) + (rtnl.string(2, chain) if chain else b"")
    return rtnl.nested(kind, rtnl.nested(2, body))                      # NFTA_DATA_VERDICT


# ---- messages -----------------------------------------------------------------------------------

def message(kind: int, flags: int, family: str, table: str, *attrs: bytes) -> tuple[int, int, bytes]:
    """(netlink type, flags, body) of one nf_tables message about `table`."""
    return kind, flags, NFGENMSG.pack(FAMILIES[family], 0, 0) + rtnl.string(1, table) + b"".join(attrs)


def batch_edge(kind: int) -> tuple[int, int, bytes]:
    return kind, 0, struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", NFNL_SUBSYS_NFTABLES)


@functools.lru_cache(maxsize=512)
def encode(family: str, table: str, command: tuple) -> list[tuple[int, int, bytes]]:
    """The messages of one script command (see `cni.nftables.Script`); Unsupported when nft must do it.
    Remembered: a daemon's call process sends the same shared objects and fixed rules on every ADD.
    (The list returned is shared: not to be changed.)"""
    if family not in ENCODED_FAMILIES:
        raise Unsupported(f"family {family}")
    verb, *args = command
    create = rtnl.NLM_F_CREATE

    def about_table(kind, flags, *attrs):
        return message(kind, flags, family, table, *attrs)
    if verb == "add table":
        return [about_table(NEWTABLE, create)]
    if verb == "delete table":
        return [about_table(DELTABLE, 0)]
    if verb in ("add chain", "create chain"):
        name, base = args
        flags = create | (rtnl.NLM_F_EXCL if verb == "create chain" else 0)
        return [about_table(NEWCHAIN, flags, rtnl.string(3, name), *(_hook(base) if base else ()))]
    if verb == "delete chain":
        return [about_table(DELCHAIN, 0, rtnl.string(3, args[0]))]
    if verb == "flush chain":
        return [about_table(DELRULE, 0, rtnl.string(2, args[0]))]
    if verb == "add rule":
        chain, text, rule_comment = args
        attrs = [rtnl.string(2, chain), rtnl.nested(4, *rule_expressions(text, family))]
        if rule_comment:
            attrs.append(rtnl.attr(7, comment_userdata(rule_comment)))
        return [about_table(NEWRULE, create | NLM_F_APPEND, *attrs)]
    if verb == "delete rule":
        chain, handle = args
        return [about_table(DELRULE, 0, rtnl.string(2, chain), rtnl.attr(3, struct.pack(">Q", handle)))]
    if verb == "add map":
        return [about_table(NEWSET, create, *_map(*args))]
    if verb in ("add element", "delete element"):
        map_name, key, chain = args
        kind, flags = (NEWSETELEM, create) if verb == "add element" else (DELSETELEM, 0)
        return [about_table(kind, flags, *element_list(map_name, key, chain))]
    raise Unsupported(verb)


def _hook(base) -> list[bytes]:
    hook = rtnl.nested(4, be32(1, _HOOKS[base.hook]), be32(2, base.priority))
    return [hook, be32(5, _VERDICTS["accept"]), rtnl.string(7, base.type)]


def _map(name: str, key_type: str) -> list[bytes]:
    """The attributes of a verdict map."""
    if key_type not in _MAP_KEYS:
        raise Unsupported(f"map key type {key_type}")
    type_id, length, userdata = _MAP_KEYS[key_type]
    return [rtnl.string(2, name), be32(3, _SET_MAP), be32(4, type_id), be32(5, length), be32(6, _DATA_VERDICT),
            be32(7, _VERDICT_LEN), be32(10, next(_SET_IDS)), rtnl.attr(13, userdata)]


def comment_userdata(text: str) -> bytes:
    """A rule's comment as nft stores it: type 0 (comment), length, the text and its NUL."""
    raw = text.encode() + b"\0"
    if len(raw) > 255:
        raise Unsupported("comment too long")
    return bytes([_UDATA_COMMENT, len(raw)]) + raw


def userdata_comment(userdata: bytes) -> str:
    """The comment in a rule's user data, as `comment_userdata` (and nft) write it."""
    at = 0
    while at + 2 <= len(userdata):
        kind, size = userdata[at], userdata[at + 1]
        if kind == _UDATA_COMMENT:
            return userdata[at + 2:at + 2 + size].rstrip(b"\0").decode(errors="replace")
        at += 2 + size
    return ""


def element_list(map_name: str, key: str, jump: str | None = None) -> tuple[bytes, bytes]:
    """The set name and element list attributes naming one element (jumping to chain `jump`)."""
    element = rtnl.nested(1, _data(1, element_key(key)), *([_verdict(2, "jump", jump)] if jump else ()))
    return rtnl.string(2, map_name), rtnl.nested(3, element)


def element_jump(attrs: dict) -> str | None:
    """The chain the one element of a get-element answer jumps to."""
    element = rtnl.parse(rtnl.parse(attrs.get(3, b"")).get(1, b""))
    verdict = rtnl.parse(rtnl.parse(element.get(2, b"")).get(2, b""))
    return rtnl.as_string(verdict.get(2)) or None


def element_key(key: str) -> bytes:
    """A map key as written in a script: an address, `proto . port`, or an interface name."""
    if " . " in key:
        protocol, port = key.split(" . ")
        if protocol not in _L4:
            raise Unsupported(f"protocol {protocol}")
        return struct.pack("=I", _L4[protocol]) + struct.pack(">H", _port(port)) + b"\0\0"
    try:
        return ipaddress.ip_address(key).packed
    except ValueError:
        pass
    name = key.strip('"').encode()
    if not name or len(name) >= _IFNAMSIZ or b'"' in name or b" " in name:
        raise Unsupported(f"map key {key}")
    return name.ljust(_IFNAMSIZ, b"\0")


# ---- rule texts ---------------------------------------------------------------------------------

def _expr(name: str, *attrs: bytes) -> bytes:
    body = rtnl.string(1, name) + (rtnl.nested(2, *attrs) if attrs else b"")
    return rtnl.nested(1, body)                                          # NFTA_LIST_ELEM


def _meta(key: int) -> bytes:
    return _expr("meta", be32(2, key), be32(1, _REG_1))


def _cmp(op: int, value: bytes) -> bytes:
    return _expr("cmp", be32(1, _REG_1), be32(2, op), _data(3, value))


def _payload(base: int, offset: int, length: int, reg: int = _REG_1) -> bytes:
    return _expr("payload", be32(1, reg), be32(2, base), be32(3, offset), be32(4, length))


def _bitwise(length: int, mask: bytes) -> bytes:
    return _expr("bitwise", be32(1, _REG_1), be32(2, _REG_1), be32(3, length), _data(4, mask),
                 _data(5, bytes(length)))


def _immediate(reg: int, value: bytes) -> bytes:
    return _expr("immediate", be32(1, reg), _data(2, value))


def _verdict_expr(verdict: str, chain: str | None = None) -> bytes:
    return _expr("immediate", be32(1, _REG_VERDICT), _verdict(2, verdict, chain))


def _lookup(map_name: str) -> bytes:
    return _expr("lookup", rtnl.string(1, map_name), be32(2, _REG_1), be32(3, _REG_VERDICT))


_BRIDGE_WORDS = {"ether", "iifname", "jump", "goto", *_VERDICTS}     # what a bridge-family rule may hold


class _Rule:
    """Reads one rule text word by word into expressions, adding the dependencies nft adds in the
    inet family: `meta nfproto` before the first match on an ip/ip6 header, `meta l4proto` before a
    port match."""

    def __init__(self, text: str, family: str):
        self.family = family
        self.words = text.split()
        self.at = 0
        self.out: list[bytes] = []
        self.nfproto: str | None = None
        self.l4proto: str | None = None

    def next(self) -> str:
        if self.at >= len(self.words):
            raise Unsupported("rule ends early")
        self.at += 1
        return self.words[self.at - 1]

    def peek(self, n: int = 0) -> str | None:
        return self.words[self.at + n] if self.at + n < len(self.words) else None

    def operator(self) -> int:
        """`!=` when the next word is one (taken), else equality."""
        if self.peek() == "!=":
            self.next()
            return _CMP_NEQ
        return _CMP_EQ

    def expect(self, *words: str):
        for word in words:
            if self.next() != word:
                raise Unsupported(f"expected {word}")

    def depend_on(self, nfproto: str):
        if self.nfproto != nfproto:
            self.out += [_meta(_META_NFPROTO), _cmp(_CMP_EQ, bytes([_NFPROTO[nfproto]]))]
            self.nfproto = nfproto

    def compile(self) -> list[bytes]:
        while self.at < len(self.words):
            word = self.next()
            if word not in _BRIDGE_WORDS if self.family == "bridge" else word == "ether":
                raise Unsupported(f"{word} in the {self.family} family")
            if word == "meta":
                self.meta()
            elif word in _IP_HEADERS:
                self.address(word)
            elif word in _L4:
                self.port(word)
            elif word == "ether":
                self.ether()
            elif word == "iifname":
                self.expect("vmap")
                self.out += [_meta(_META_IIFNAME), _lookup(self.map_name())]
            elif word == "ct":
                self.expect("status", "dnat")
                self.out += [_expr("ct", be32(1, _REG_1), be32(2, _CT_STATUS)),
                             _bitwise(4, struct.pack("=I", _IPS_DST_NAT)), _cmp(_CMP_NEQ, bytes(4))]
            elif word == "fib":
                self.expect("daddr", "type", "local")
                self.out += [_expr("fib", be32(1, _REG_1), be32(2, _FIB_RESULT_ADDRTYPE), be32(3, _FIB_F_DADDR)),
                             _cmp(_CMP_EQ, struct.pack("=I", _RTN_LOCAL))]
            elif word == "masquerade":
                self.out.append(_expr("masq"))
            elif word == "dnat":
                self.dnat()
            elif word in ("jump", "goto"):
                self.out.append(_verdict_expr(word, self.next()))
            elif word in _VERDICTS:
                self.out.append(_verdict_expr(word))
            else:
                raise Unsupported(word)
        return self.out

    def meta(self):
        word = self.next()
        if word == "nfproto" and self.peek() in _NFPROTO:
            self.depend_on(self.next())
        elif word == "l4proto":
            self.expect(".", "th", "dport", "vmap")
            self.out += [_meta(_META_L4PROTO), _payload(_BASE_TRANSPORT, 2, 2, _REG32_01), _lookup(self.map_name())]
        else:
            raise Unsupported(f"meta {word}")

    def map_name(self) -> str:
        word = self.next()
        if not word.startswith("@"):
            raise Unsupported(word)
        return word[1:]

    def address(self, proto: str):
        nfproto, size, offsets = _IP_HEADERS[proto]
        field = self.next()
        if field not in offsets:
            raise Unsupported(f"{proto} {field}")
        self.depend_on(nfproto)
        if self.peek() == "vmap":
            self.next()
            self.out += [_payload(_BASE_NETWORK, offsets[field], size), _lookup(self.map_name())]
            return
        op = self.operator()
        try:
            network = ipaddress.ip_network(self.next(), strict=True)
        except ValueError as e:
            raise Unsupported(str(e)) from None
        if len(network.network_address.packed) != size or network.prefixlen == 0:
            raise Unsupported(str(network))
        packed, bits = network.network_address.packed, network.prefixlen
        if bits % 8 == 0:       # nft loads only the prefix's bytes
            self.out += [_payload(_BASE_NETWORK, offsets[field], bits // 8), _cmp(op, packed[:bits // 8])]
        else:
            mask = network.netmask.packed
            self.out += [_payload(_BASE_NETWORK, offsets[field], size), _bitwise(size, mask), _cmp(op, packed)]

    def ether(self):
        offset = {"daddr": 0, "saddr": 6}.get(self.next())
        op = self.operator()
        try:
            mac = bytes.fromhex(self.next().replace(":", ""))
        except ValueError:
            raise Unsupported("ether address") from None
        if offset is None or len(mac) != 6:
            raise Unsupported("ether match")
        self.out += [_payload(_BASE_LINK, offset, 6), _cmp(op, mac)]

    def port(self, protocol: str):
        self.expect("dport")
        port = _port(self.next())
        if self.l4proto != protocol:
            self.out += [_meta(_META_L4PROTO), _cmp(_CMP_EQ, bytes([_L4[protocol]]))]
            self.l4proto = protocol
        self.out += [_payload(_BASE_TRANSPORT, 2, 2), _cmp(_CMP_EQ, struct.pack(">H", port))]

    def dnat(self):
        proto = self.next()
        if proto not in _IP_HEADERS:
            raise Unsupported(f"dnat {proto}")
        self.expect("to")
        target = self.next()
        host, colon, port = target.rpartition(":")
        try:
            address = ipaddress.ip_address(host.strip("[]") if proto == "ip6" else host)
        except ValueError:
            raise Unsupported(target) from None
        if not colon or len(address.packed) != _IP_HEADERS[proto][1]:
            raise Unsupported(target)
        self.out += [_immediate(_REG_1, address.packed), _immediate(_REG_2, struct.pack(">H", _port(port))),
                     _expr("nat", be32(1, _NAT_DNAT), be32(2, _NFPROTO[_IP_HEADERS[proto][0]]), be32(3, _REG_1),
                           be32(5, _REG_2), be32(7, _NAT_PROTO_SPECIFIED))]


def _port(word: str) -> int:
    if not word.isdigit() or int(word) > 0xFFFF:
        raise Unsupported(f"port {word}")
    return int(word)


def rule_expressions(text: str, family: str = "inet") -> list[bytes]:
    """The expressions of a rule text in podplumb's grammar. In the inet family: matches `meta
    nfproto ipv4|ipv6`, `ip|ip6 saddr|daddr [!=] <address or prefix>`, `tcp|udp|sctp dport <n>`,
    `ct status dnat`, `fib daddr type local`; lookups `ip|ip6 saddr|daddr vmap @m`, `iifname vmap
    @m`, `meta l4proto . th dport vmap @m`; statements `masquerade`, `dnat ip to A:P`, `dnat ip6 to
    [A]:P`, and the verdicts. In the bridge family: `ether saddr|daddr [!=] <MAC>`, `iifname vmap @m`
    and the verdicts. Unsupported for anything else."""
    return _Rule(text, family).compile()
