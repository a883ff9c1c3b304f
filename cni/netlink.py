"""A small typed layer over rtnetlink (cni.rtnl): one open socket per namespace.

Never switches the process's namespace: a socket for another namespace is opened by a
short-lived thread inside it, and a missing namespace is an error, never created.
Kernel errors become CNIError. `Namespace.ipr` is pyroute2's IPRoute in the same namespace, for
the few modules that need message kinds cni.rtnl does not build (tc, policy routing); it is
imported and opened only when one of them asks for it.
"""

import contextlib
import ctypes
import errno
import functools
import ipaddress
import os
import socket
import struct
import threading
import time

import cni
from cni import rtnl
from cni.errors import CNIError, KERNEL_FAILURE, LINK_CONFLICT, UNKNOWN_CONTAINER
from cni.rtnl import KernelError, nested, string, u8, u32

IFA_F_NODAD, IFA_F_DADFAILED, IFA_F_TENTATIVE, IFA_F_NOPREFIXROUTE = 0x02, 0x08, 0x40, 0x200
IFF_UP = 0x1
RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 253, 255
AF_INET, AF_INET6 = rtnl.AF_INET, rtnl.AF_INET6
CLONE_NEWNET = 0x40000000
RT_TABLE_MAIN = 254
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 1, 3, 4, 7, 15
IFLA_VXLAN_LOCAL6 = 17
IFLA_BR_VLAN_FILTERING = 7
IPV4_DEVCONF = {"arp_notify": 22}     # net.ipv4.conf.<link>.* settings by their index in the kernel's devconf
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
_NDMSG = struct.Struct("=BxxxiHBB")     # family, ifindex, state, flags, type


class Link:
    """A link as the kernel reports it. Plain classes here, not dataclasses: every standalone plugin
    call imports this module, and `dataclasses` costs it more than its netlink work (see cni.skel.Request)."""
    __slots__ = ("index", "name", "kind", "mac", "mtu", "master", "peer", "hairpin", "isolated", "flags", "txqlen",
                 "alias", "info")

    def __init__(self, index: int, name: str, kind: str, mac: str, mtu: int,
                 master: int,       # ifindex of the bridge this link is enslaved to, 0 if none
                 peer: int,         # for a veth: the peer's ifindex (in the peer's namespace)
                 hairpin: bool, isolated: bool,
                 flags: int = 0,    # IFF_*
                 txqlen: int = 0, alias: str = "",
                 info: dict | None = None):   # IFLA_INFO_DATA
        self.index = index
        self.name = name
        self.kind = kind
        self.mac = mac
        self.mtu = mtu
        self.master = master
        self.peer = peer
        self.hairpin = hairpin
        self.isolated = isolated
        self.flags = flags
        self.txqlen = txqlen
        self.alias = alias
        self.info = {} if info is None else info

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    def __repr__(self):
        return f"Link({self.index}, {self.name!r}, kind={self.kind!r}, mac={self.mac!r}, up={self.up})"


class Vxlan:
    __slots__ = ("vni", "port", "local", "underlay", "learning")

    def __init__(self, vni: int, port: int, local: str | None,
                 underlay: int,     # ifindex of the link carrying the tunnel, 0 if none
                 learning: bool):
        self.vni = vni
        self.port = port
        self.local = local
        self.underlay = underlay
        self.learning = learning


def kernel_error(what: str, error: Exception) -> CNIError:
    code = getattr(error, "code", None) or getattr(error, "errno", None)
    return CNIError(KERNEL_FAILURE, what, f"{errno.errorcode.get(code, code)}: {error}")


class Namespace:
    """Netlink operations inside one network namespace (None: this process's own)."""

    def __init__(self, path: str | None = None):
        self.path = path
        self._ipr = None
        try:
            self.sock = rtnl.Socket(_netlink_socket_in(path) if path else None)
        except FileNotFoundError:
            raise CNIError(UNKNOWN_CONTAINER, f"network namespace {path} does not exist") from None
        except OSError as e:
            raise CNIError(UNKNOWN_CONTAINER, f"cannot open network namespace {path}", str(e)) from None

    @property
    def ipr(self):
        """pyroute2's IPRoute in this namespace (its own socket), for message kinds cni.rtnl lacks."""
        if self._ipr is None:
            from cni.pyroute2_lite import IPRoute
            self._ipr = IPRoute(fileno=_netlink_socket_in(self.path).detach()) if self.path else IPRoute()
        return self._ipr

    def close(self):
        self.sock.close()
        if self._ipr is not None:
            self._ipr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # links
    def link(self, name: str | None = None, index: int | None = None) -> Link | None:
        try:
            return _to_link(self.sock.get(rtnl.RTM_GETLINK, rtnl.link_request(index or 0, name)))
        except KernelError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise kernel_error(f"cannot read link {name or index}", e) from None

    def require_absent(self, name: str):
        """LINK_CONFLICT when link `name` exists here (a pod's interface left by an earlier ADD)."""
        if self.link(name) is not None:
            raise CNIError(LINK_CONFLICT, f"interface {name} already exists in {self.path or 'this namespace'}",
                           "DEL the earlier attachment first")

    def links(self) -> list[Link]:
        """Every link: a dump, whose cost grows with the node. Not for a plugin's ADD/DEL/CHECK."""
        return [_to_link(body) for body in self.sock.dump(rtnl.RTM_GETLINK, rtnl.link_request())]

    def ports(self, bridge_index: int) -> list[int]:
        """The ifindexes of the links enslaved to a bridge (the kernel filters the dump)."""
        try:
            links = [_to_link(body) for body in self.sock.dump(rtnl.RTM_GETLINK, rtnl.ports_request(bridge_index))]
        except OSError as e:
            raise CNIError(KERNEL_FAILURE, f"cannot list the ports of bridge {bridge_index}", str(e)) from None
        return [link.index for link in links if link.master == bridge_index]

    def _new_link(self, what: str, attrs: bytes, flags: int = rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
                  index: int = 0, ifflags: int = 0, change: int = 0) -> bool:
        """RTM_NEWLINK; False when the name is taken (EEXIST)."""
        try:
            self.sock.request(rtnl.RTM_NEWLINK, rtnl.IFINFOMSG.pack(0, 0, index, ifflags, change) + attrs, flags)
        except KernelError as e:
            if e.code == errno.EEXIST:
                return False
            raise kernel_error(what, e) from None
        return True

    def add_bridge(self, name: str, mtu: int = 0) -> bool:
        """Create a bridge; False when a link of that name already exists (someone else won the race)."""
        attrs = string(rtnl.IFLA_IFNAME, name) + (u32(rtnl.IFLA_MTU, mtu) if mtu else b"")
        return self._new_link(f"cannot create bridge {name}",
                              attrs + nested(rtnl.IFLA_LINKINFO, string(rtnl.IFLA_INFO_KIND, "bridge")))

    def add_veth(self, host_name: str, peer_name: str, peer_netns: str, mtu: int = 0,
                 peer_mac: str | None = None) -> bool:
        """A veth pair whose peer is born inside `peer_netns` (never visible in this namespace);
        False when one of the two names is taken."""
        mtu_attr = u32(rtnl.IFLA_MTU, mtu) if mtu else b""
        with _opened_netns(peer_netns) as fd:
            peer = (rtnl.IFINFOMSG.pack(0, 0, 0, 0, 0) + string(rtnl.IFLA_IFNAME, peer_name)
                    + u32(rtnl.IFLA_NET_NS_FD, fd) + mtu_attr
                    + (rtnl.mac(rtnl.IFLA_ADDRESS, peer_mac) if peer_mac else b""))
            linkinfo = nested(rtnl.IFLA_LINKINFO, string(rtnl.IFLA_INFO_KIND, "veth"),
                              nested(rtnl.IFLA_INFO_DATA, rtnl.attr(rtnl.VETH_INFO_PEER, peer)))
            return self._new_link(f"cannot create veth pair for {peer_name}",
                                  string(rtnl.IFLA_IFNAME, host_name) + mtu_attr + linkinfo)

    def set_link(self, index: int, state: str | None = None, flags: int = 0, change: int = 0,
                 master: int | None = None, address: str | None = None, mtu: int | None = None,
                 txqlen: int | None = None, ifalias: str | None = None, ifname: str | None = None):
        """Change the given settings of link `index` in one request. `state` "up"/"down"; `flags`
        are the IFF_* bits to set among those in `change`."""
        if state is not None:
            flags, change = (flags | IFF_UP if state == "up" else flags & ~IFF_UP), change | IFF_UP
        attrs = b"".join([
            u32(rtnl.IFLA_MASTER, master) if master is not None else b"",
            rtnl.mac(rtnl.IFLA_ADDRESS, address) if address is not None else b"",
            u32(rtnl.IFLA_MTU, mtu) if mtu is not None else b"",
            u32(rtnl.IFLA_TXQLEN, txqlen) if txqlen is not None else b"",
            string(rtnl.IFLA_IFALIAS, ifalias) if ifalias is not None else b"",
            string(rtnl.IFLA_IFNAME, ifname) if ifname is not None else b"",
        ])
        what = {k: v for k, v in dict(state=state, master=master, address=address, mtu=mtu, txqlen=txqlen,
                                      ifalias=ifalias, ifname=ifname).items() if v is not None}
        try:
            self.sock.request(rtnl.RTM_NEWLINK, rtnl.IFINFOMSG.pack(0, 0, index, flags, change) + attrs)
        except KernelError as e:
            raise kernel_error(f"cannot set {what or {'flags': flags}} on link {index}", e) from None

    def set_ipv4_conf(self, index: int, key: str, value: int):
        """net.ipv4.conf.<link>.<key>, set through netlink (IFLA_AF_SPEC): no trip through /proc/sys,
        which for a pod's link means a thread entering the pod's namespace."""
        conf = nested(rtnl.IFLA_AF_SPEC, nested(AF_INET, nested(rtnl.IFLA_INET_CONF, u32(IPV4_DEVCONF[key], value))))
        try:
            self.sock.request(rtnl.RTM_NEWLINK, rtnl.IFINFOMSG.pack(0, 0, index, 0, 0) + conf)
        except KernelError as e:
            raise kernel_error(f"cannot set {key} on link {index}", e) from None

    def set_bridge_port(self, index: int, hairpin: bool, isolated: bool):
        protinfo = rtnl.attr(rtnl.IFLA_PROTINFO | rtnl.NLA_F_NESTED,
                             u8(rtnl.IFLA_BRPORT_MODE, int(hairpin)) + u8(rtnl.IFLA_BRPORT_ISOLATED, int(isolated)))
        try:
            self.sock.request(rtnl.RTM_SETLINK, rtnl.IFINFOMSG.pack(rtnl.AF_BRIDGE, 0, index, 0, 0) + protinfo)
        except KernelError as e:
            raise kernel_error(f"cannot set bridge port flags on link {index}", e) from None

    def set_bridge_vlan_filtering(self, index: int):
        linkinfo = nested(rtnl.IFLA_LINKINFO, string(rtnl.IFLA_INFO_KIND, "bridge"),
                          nested(rtnl.IFLA_INFO_DATA, u8(IFLA_BR_VLAN_FILTERING, 1)))
        try:
            self.sock.request(rtnl.RTM_NEWLINK, rtnl.IFINFOMSG.pack(0, 0, index, 0, 0) + linkinfo)
        except KernelError as e:
            if e.code == errno.EOPNOTSUPP:
                raise CNIError(KERNEL_FAILURE, "this kernel has no bridge VLAN filtering",
                               "vlan and vlanTrunk need CONFIG_BRIDGE_VLAN_FILTERING") from None
            raise kernel_error("cannot enable VLAN filtering", e) from None

    def vlan(self, op: str, index: int, vid: int, pvid_untagged: bool = False):
        """Never reached on a kernel without bridge VLAN filtering (set_bridge_vlan_filtering fails
        first); pyroute2 builds the request."""
        from cni.pyroute2_lite import NetlinkError as PyrouteError
        info = {"vid": vid, "flags": ["pvid", "untagged"] if pvid_untagged else []}
        try:
            self.ipr.vlan_filter(op, index=index, vlan_info=info)
        except PyrouteError as e:
            if op == "del" and e.code in (errno.ENOENT, errno.EINVAL):
                return
            raise kernel_error(f"cannot {op} VLAN {vid} on link {index}", e) from None

    def delete_link(self, name: str) -> bool:
        """Delete link `name`; False when there is none. Returns once the link is gone from the
        namespace; see `teardown_in_background` for the kernel's part after that."""
        if _background_teardowns is not None or cni.EXITS_AFTER_ANSWER:
            return self._delete_link_in_background(name)
        try:
            self.sock.request(rtnl.RTM_DELLINK, rtnl.IFINFOMSG.pack(0, 0, 0, 0, 0) + string(rtnl.IFLA_IFNAME, name))
        except KernelError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise kernel_error(f"cannot delete link {name}", e) from None
        return True

    def _delete_link_in_background(self, name: str) -> bool:
        link = self.link(name)
        if link is None:
            return False
        if _background_teardowns is not None:
            teardown = _Teardown(self.path, link.index)
            _background_teardowns.append(teardown)
        else:
            teardown = _DetachedTeardown(self.path, link.index)
        while self.link(index=link.index) is not None:
            if not teardown.is_alive():
                break
            time.sleep(TEARDOWN_POLL)
        teardown.raise_error(name)
        return True

    def add_macvlan(self, name: str, master: int, mode: str, netns: str | None = None, mtu: int = 0,
                    mac: str | None = None) -> bool:
        """A macvlan link on `master` (an ifindex here), born inside `netns` when given, down;
        False when the name is taken there."""
        attrs = (string(rtnl.IFLA_IFNAME, name) + u32(rtnl.IFLA_LINK, master)
                 + (u32(rtnl.IFLA_MTU, mtu) if mtu else b"") + (rtnl.mac(rtnl.IFLA_ADDRESS, mac) if mac else b"")
                 + nested(rtnl.IFLA_LINKINFO, string(rtnl.IFLA_INFO_KIND, "macvlan"),
                          nested(rtnl.IFLA_INFO_DATA, u32(rtnl.IFLA_MACVLAN_MODE, MACVLAN_MODES[mode]))))
        what = f"cannot create macvlan link on link {master}"
        if not netns:
            return self._new_link(what, attrs)
        with _opened_netns(netns) as fd:
            return self._new_link(what, attrs + u32(rtnl.IFLA_NET_NS_FD, fd))

    def alias(self, index: int) -> str | None:
        """The link's ifalias (host-device keeps a moved link's original name there)."""
        link = self.link(index=index)
        if link is None:
            raise CNIError(KERNEL_FAILURE, f"cannot read link {index}", "it does not exist")
        return link.alias or None

    def move_link(self, index: int, netns: str, name: str, where: str | None = None):
        """Move the link into the namespace at `netns` (a path, described as `where` in errors) and
        name it `name` there. The kernel moves it under its current name when that is free there and
        renames it afterwards; it uses `name` straight away only when the current name is taken."""
        try:
            with _opened_netns(netns) as fd:
                self.sock.request(rtnl.RTM_NEWLINK, rtnl.IFINFOMSG.pack(0, 0, index, 0, 0)
                                  + u32(rtnl.IFLA_NET_NS_FD, fd) + string(rtnl.IFLA_IFNAME, name))
        except KernelError as e:
            if e.code == errno.EEXIST:
                raise CNIError(LINK_CONFLICT, f"cannot move link {index} as {name}",
                               f"a link named {name} already exists in {where or netns}") from None
            raise kernel_error(f"cannot move link {index} into {netns}", e) from None

    def macvlan_mode(self, index: int) -> str | None:
        """The mode of a macvlan link (bridge, private, vepa, passthru, source); None for other links."""
        link = self.link(index=index)
        if link is None:
            raise CNIError(KERNEL_FAILURE, f"cannot read link {index}", "it does not exist")
        if link.kind != "macvlan":
            return None
        mode = rtnl.as_u32(link.info.get(rtnl.IFLA_MACVLAN_MODE))
        return next((name for name, value in MACVLAN_MODES.items() if value == mode), None)

    # addresses
    def addresses(self, index: int) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        """The link's addresses, filtered by the kernel (a node's veths carry an IPv6 link-local
        address each: a full dump grows with the pods)."""
        return [ipaddress.ip_interface(f"{address}/{prefixlen}")
                for family in (AF_INET, AF_INET6) for address, prefixlen, _ in self._addresses(family, index)]

    def _addresses(self, family: int, index: int) -> list[tuple[str, int, int]]:
        try:
            return rtnl.addresses(self.sock, family, index)
        except OSError as e:
            raise CNIError(KERNEL_FAILURE, f"cannot read the addresses of link {index}", str(e)) from None

    def _address_request(self, index: int, iface, flags: int = 0) -> bytes:
        family = AF_INET if iface.version == 4 else AF_INET6
        return (rtnl.IFADDRMSG.pack(family, iface.network.prefixlen, flags & 0xFF, 0, index)
                + rtnl.ip(rtnl.IFA_LOCAL, iface.ip) + rtnl.ip(rtnl.IFA_ADDRESS, iface.ip))

    def add_address(self, index: int, address: str, nodad: bool = True, prefix_route: bool = True):
        """`prefix_route` False: no route to the address's subnet comes with it."""
        iface = ipaddress.ip_interface(address)
        flags = (IFA_F_NODAD if nodad and iface.version == 6 else 0) | (0 if prefix_route else IFA_F_NOPREFIXROUTE)
        body = self._address_request(index, iface, flags) + (u32(rtnl.IFA_FLAGS, flags) if flags else b"")
        if iface.version == 4 and iface.network.prefixlen < 31:   # as `ip addr add ... brd +` and the reference
            body += rtnl.ip(rtnl.IFA_BROADCAST, iface.network.broadcast_address)
        try:
            self.sock.request(rtnl.RTM_NEWADDR, body, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL)
        except KernelError as e:
            if e.code != errno.EEXIST:
                raise kernel_error(f"cannot add address {address}", e) from None

    def wait_for_dad(self, index: int, timeout: float = 10.0):
        """Wait until no address of the link is tentative; fail if DAD found a duplicate."""
        deadline = time.monotonic() + timeout
        while True:
            flags = [(address, flags) for address, _, flags in self._addresses(AF_INET6, index)]
            duplicate = [a for a, f in flags if f & IFA_F_DADFAILED]
            if duplicate:
                raise CNIError(KERNEL_FAILURE, f"duplicate address detected: {', '.join(duplicate)}")
            if not any(f & IFA_F_TENTATIVE for _, f in flags):
                return
            if time.monotonic() > deadline:
                raise CNIError(KERNEL_FAILURE, f"addresses still tentative after {timeout:.0f}s of DAD")
            time.sleep(0.05)

    def delete_address(self, index: int, address: str):
        try:
            self.sock.request(rtnl.RTM_DELADDR, self._address_request(index, ipaddress.ip_interface(address)))
        except KernelError as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                raise kernel_error(f"cannot remove address {address}", e) from None

    def address_owner(self, address: str) -> int | None:
        """The ifindex holding `address`, None if no link does (a dump of every address: not for a
        plugin's ADD/DEL/CHECK)."""
        wanted = ipaddress.ip_address(address)
        family = AF_INET if wanted.version == 4 else AF_INET6
        for body in self.sock.dump(rtnl.RTM_GETADDR, rtnl.IFADDRMSG.pack(family, 0, 0, 0, 0)):
            attrs = rtnl.parse(body[rtnl.IFADDRMSG.size:])
            raw = attrs.get(rtnl.IFA_LOCAL) or attrs.get(rtnl.IFA_ADDRESS)
            if raw and ipaddress.ip_address(raw) == wanted:
                return rtnl.IFADDRMSG.unpack_from(body)[4]
        return None

    # routes
    def routes(self, index: int | None = None, families=(AF_INET, AF_INET6)) -> list[tuple[str, str | None, int]]:
        """(dst CIDR, gateway or None, oif) of the main table, of link `index` if given (filtered by
        the kernel: the main table holds an IPv6 link-local route per veth)."""
        try:
            return [route for family in families for route in rtnl.routes(self.sock, family, RT_TABLE_MAIN, index)]
        except OSError as e:
            raise CNIError(KERNEL_FAILURE, "cannot read the routing table", str(e)) from None

    def _route_message(self, dst: str, index: int, scope: int = rtnl.RT_SCOPE_UNIVERSE, route_flags: int = 0,
                       for_delete: bool = False) -> bytes:
        net = ipaddress.ip_network(dst, strict=False)
        family = AF_INET if net.version == 4 else AF_INET6
        if for_delete:      # as `ip route del`: any protocol, scope and type
            header = rtnl.RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0, 0)
        else:
            header = rtnl.RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, rtnl.RTPROT_BOOT, scope,
                                     rtnl.RTN_UNICAST, route_flags)
        return header + rtnl.ip(rtnl.RTA_DST, net.network_address) + u32(rtnl.RTA_OIF, index)

    def add_route(self, index: int, dst: str, gateway: str | None = None, source: str | None = None,
                  link_scope: bool = False):
        """`link_scope`: the destination is directly on the link (as `ip route` marks a route without a gateway)."""
        body = self._route_message(dst, index, RT_SCOPE_LINK if link_scope else rtnl.RT_SCOPE_UNIVERSE)
        body += (rtnl.ip(rtnl.RTA_GATEWAY, gateway) if gateway else b"") + \
            (rtnl.ip(rtnl.RTA_PREFSRC, source) if source else b"")
        try:
            self.sock.request(rtnl.RTM_NEWROUTE, body, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL)
        except KernelError as e:
            if e.code != errno.EEXIST:
                raise kernel_error(f"cannot add route to {dst}" + (f" via {gateway}" if gateway else ""), e) from None

    def replace_route(self, index: int, dst: str, gateway: str, onlink: bool = False):
        """Add the route, or make the existing route to `dst` this one."""
        body = self._route_message(dst, index, route_flags=RTNH_F_ONLINK if onlink else 0)
        try:
            self.sock.request(rtnl.RTM_NEWROUTE, body + rtnl.ip(rtnl.RTA_GATEWAY, gateway),
                              rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE)
        except KernelError as e:
            raise kernel_error(f"cannot set route to {dst} via {gateway}", e) from None

    def delete_route(self, index: int, dst: str):
        try:
            self.sock.request(rtnl.RTM_DELROUTE, self._route_message(dst, index, for_delete=True))
        except KernelError as e:
            if e.code not in (errno.ESRCH, errno.ENOENT):
                raise kernel_error(f"cannot delete route to {dst}", e) from None

    # VXLAN tunnel endpoints and their forwarding entries (neighbours, FDB)
    def vxlan(self, name: str) -> Vxlan | None:
        """The VXLAN settings of link `name`; None when it is missing or not a vxlan link."""
        link = self.link(name)
        if link is None or link.kind != "vxlan":
            return None
        data = link.info
        local = data.get(IFLA_VXLAN_LOCAL) or data.get(IFLA_VXLAN_LOCAL6)
        port = data.get(IFLA_VXLAN_PORT)
        return Vxlan(vni=rtnl.as_u32(data.get(IFLA_VXLAN_ID)), port=struct.unpack("!H", port)[0] if port else 0,
                     local=rtnl.as_ip(local) if local else None, underlay=rtnl.as_u32(data.get(IFLA_VXLAN_LINK)),
                     learning=bool(data.get(IFLA_VXLAN_LEARNING, b"\0")[0]))

    def add_vxlan(self, name: str, vni: int, port: int, local: str, underlay: int, mtu: int, mac: str) -> bool:
        """A unicast VTEP without MAC learning; False when a link of that name already exists."""
        local_kind = IFLA_VXLAN_LOCAL if ipaddress.ip_address(local).version == 4 else IFLA_VXLAN_LOCAL6
        data = (u32(IFLA_VXLAN_ID, vni) + rtnl.attr(IFLA_VXLAN_PORT, struct.pack("!H", port))
                + rtnl.ip(local_kind, local) + (u32(IFLA_VXLAN_LINK, underlay) if underlay else b"")
                + u8(IFLA_VXLAN_LEARNING, 0))
        attrs = (string(rtnl.IFLA_IFNAME, name) + u32(rtnl.IFLA_MTU, mtu) + rtnl.mac(rtnl.IFLA_ADDRESS, mac)
                 + nested(rtnl.IFLA_LINKINFO, string(rtnl.IFLA_INFO_KIND, "vxlan"), nested(rtnl.IFLA_INFO_DATA, data)))
        return self._new_link(f"cannot create vxlan link {name}", attrs)

    def default_route_link(self) -> int | None:
        """The output link of the main table's IPv4 default route."""
        for dst, _, oif in self.routes(families=(AF_INET,)):
            if dst == "0.0.0.0/0" and oif:
                return oif
        return None

    def _neighbours(self, family: int, index: int) -> list[tuple[int, dict]]:
        """(state, attributes) of the neighbour (AF_INET) or FDB (AF_BRIDGE) entries of link `index`."""
        out = []
        for body in self.sock.dump(RTM_GETNEIGH, _NDMSG.pack(family, 0, 0, 0, 0) + u32(NDA_IFINDEX, index)):
            _, ifindex, state, _, _ = _NDMSG.unpack_from(body)
            if ifindex == index:
                out.append((state, rtnl.parse(body[_NDMSG.size:])))
        return out

    def _neighbour_request(self, command: int, family: int, index: int, what: str, state: int = 0,
                           flags: int = 0, attrs: bytes = b"", tolerated=()):
        message_flags = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE if command == RTM_NEWNEIGH else 0
        try:
            self.sock.request(command, _NDMSG.pack(family, index, state, flags, 0) + attrs, message_flags)
        except KernelError as e:
            if e.code not in tolerated:
                raise kernel_error(what, e) from None

    def permanent_neighbours(self, index: int) -> dict[str, str]:
        """IPv4 neighbour entries of state PERMANENT on the link: {address: MAC}."""
        return {rtnl.as_ip(attrs[NDA_DST]): rtnl.as_mac(attrs[NDA_LLADDR])
                for state, attrs in self._neighbours(AF_INET, index)
                if state & NUD_PERMANENT and attrs.get(NDA_LLADDR) and NDA_DST in attrs}

    def set_permanent_neighbour(self, index: int, address: str, mac: str):
        self._neighbour_request(RTM_NEWNEIGH, AF_INET, index, f"cannot set neighbour {address} -> {mac}",
                                state=NUD_PERMANENT, attrs=rtnl.ip(NDA_DST, address) + rtnl.mac(NDA_LLADDR, mac))

    def delete_neighbour(self, index: int, address: str):
        self._neighbour_request(RTM_DELNEIGH, AF_INET, index, f"cannot delete neighbour {address}",
                                attrs=rtnl.ip(NDA_DST, address), tolerated=(errno.ENOENT, errno.ESRCH))

    def remote_fdb(self, index: int) -> set[tuple[str, str]]:
        """(MAC, remote IP) of the link's FDB entries that point at a remote (a VTEP's unicast entries)."""
        return {(rtnl.as_mac(attrs.get(NDA_LLADDR)), rtnl.as_ip(attrs[NDA_DST]))
                for _, attrs in self._neighbours(rtnl.AF_BRIDGE, index) if NDA_DST in attrs}

    def set_remote_fdb(self, index: int, mac: str, remote: str):
        self._neighbour_request(RTM_NEWNEIGH, rtnl.AF_BRIDGE, index, f"cannot set FDB entry {mac} -> {remote}",
                                state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF,
                                attrs=rtnl.mac(NDA_LLADDR, mac) + rtnl.ip(NDA_DST, remote))

    def delete_remote_fdb(self, index: int, mac: str, remote: str):
        self._neighbour_request(RTM_DELNEIGH, rtnl.AF_BRIDGE, index, f"cannot delete FDB entry {mac} -> {remote}",
                                flags=NTF_SELF, attrs=rtnl.mac(NDA_LLADDR, mac) + rtnl.ip(NDA_DST, remote),
                                tolerated=(errno.ENOENT, errno.ESRCH))


# The kernel takes a deleted link out of its namespace within a millisecond, then waits for an RCU
# grace period (10-20 ms) before it answers RTM_DELLINK. delete_link need not wait with it: a process
# that outlives its answer (a call process of the node daemon) leaves that wait to a thread (after
# `teardown_in_background()`; `finish_teardowns()` waits for the rest), and a plugin executable,
# which exits right after its answer (cni.EXITS_AFTER_ANSWER), to a forked child that outlives it.
# Either way delete_link returns once the link is gone from the namespace.
TEARDOWN_POLL = 0.0002
_background_teardowns = None


def teardown_in_background():
    global _background_teardowns
    _background_teardowns = []


def finish_teardowns():
    """Wait until the kernel has finished the deletions left to threads."""
    global _background_teardowns
    for teardown in _background_teardowns or ():
        teardown.join()
    _background_teardowns = None


class _Teardown(threading.Thread):
    """RTM_DELLINK of one link, sent from a thread of its own with a socket of its own."""

    def __init__(self, path: str | None, index: int):
        super().__init__(name="link-teardown")
        self.path, self.index, self.error = path, index, None
        self.start()

    def run(self):
        try:
            _delete_by_index(self.path, self.index)
        except (OSError, CNIError) as e:
            self.error = e

    def raise_error(self, name: str):
        """Raise what the deletion met, unless the link was gone anyway (ENODEV)."""
        if self.is_alive() or self.error is None:
            return
        if isinstance(self.error, CNIError):
            raise self.error
        if getattr(self.error, "errno", None) not in (errno.ENODEV, errno.ENOENT):
            raise kernel_error(f"cannot delete link {name}", self.error)


class _DetachedTeardown:
    """RTM_DELLINK of one link from a detached child (cni.run_detached), which exits with the errno."""

    def __init__(self, path: str | None, index: int):
        self.pid = cni.run_detached(lambda: _delete_alone(path, index))
        self.status = None

    def is_alive(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is None

    def raise_error(self, name: str):
        if not self.is_alive() and self.status not in (0, errno.ENODEV, errno.ENOENT):
            raise kernel_error(f"cannot delete link {name}", OSError(self.status, os.strerror(self.status)))


def _delete_alone(path: str | None, index: int) -> int:
    """In the detached child: the errno of the deletion, 0 when done."""
    try:
        _delete_by_index(path, index)
        return 0
    except OSError as e:
        return e.errno or 1


def _delete_by_index(path: str | None, index: int):
    """RTM_DELLINK of link `index` of the namespace at `path`, from the calling thread, which enters
    that namespace (a thread or child process of our own) and waits for the kernel's answer."""
    if path:
        with _opened_netns(path) as fd:
            enter(fd, path)
    sock = rtnl.Socket()
    try:
        sock.request(rtnl.RTM_DELLINK, rtnl.IFINFOMSG.pack(0, 0, index, 0, 0))
    finally:
        sock.close()


@contextlib.contextmanager
def _opened_netns(where: str):
    """The namespace at a path (or, as `ip netns` names them, /var/run/netns/<name>), open as an fd."""
    path = where if os.sep in where else os.path.join("/var/run/netns", where)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CNIError(UNKNOWN_CONTAINER, f"cannot open network namespace {path}", str(e)) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _netlink_socket_in(path: str) -> socket.socket:
    """An rtnetlink socket bound to the namespace at `path` (see run_in: nothing is forked;
    pyroute2's own netns sockets fork a helper, ~10 ms against ~1.5 ms)."""
    return run_in(path, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                              rtnl.NETLINK_ROUTE))


def run_in(path: str, work):
    """`work()` run by a short-lived thread that has entered the namespace at `path`; its value or
    its exception. The process and its other threads never switch namespace. What the thread opens
    (sockets, /proc/sys/net files) belongs to that namespace."""
    box = {}

    def enter_and_run():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                enter(fd, path)
            finally:
                os.close(fd)
            box["value"] = work()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=enter_and_run, name="netns-worker")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def enter(fd: int, what: str = "namespace"):
    """Move the calling thread (only it: a thread of our own, never one that serves others) into the
    network namespace open at `fd`."""
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}): {os.strerror(err)}")


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _to_link(body: bytes) -> Link:
    _, _, index, flags, _ = rtnl.IFINFOMSG.unpack_from(body)
    attrs = rtnl.parse(body[rtnl.IFINFOMSG.size:])
    info = rtnl.parse(attrs.get(rtnl.IFLA_LINKINFO, b""))
    port = rtnl.parse(info.get(rtnl.IFLA_INFO_SLAVE_DATA, b""))
    return Link(index=index, name=rtnl.as_string(attrs.get(rtnl.IFLA_IFNAME)),
                kind=rtnl.as_string(info.get(rtnl.IFLA_INFO_KIND)), mac=rtnl.as_mac(attrs.get(rtnl.IFLA_ADDRESS)),
                mtu=rtnl.as_u32(attrs.get(rtnl.IFLA_MTU)), master=rtnl.as_u32(attrs.get(rtnl.IFLA_MASTER)),
                peer=rtnl.as_u32(attrs.get(rtnl.IFLA_LINK)),
                hairpin=bool(port.get(rtnl.IFLA_BRPORT_MODE, b"\0")[0]),
                isolated=bool(port.get(rtnl.IFLA_BRPORT_ISOLATED, b"\0")[0]),
                flags=flags, txqlen=rtnl.as_u32(attrs.get(rtnl.IFLA_TXQLEN)),
                alias=rtnl.as_string(attrs.get(rtnl.IFLA_IFALIAS)),
                info=rtnl.parse(info.get(rtnl.IFLA_INFO_DATA, b"")))
