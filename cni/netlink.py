"""A small typed layer over pyroute2's IPRoute: one open rtnetlink socket per namespace.

Never switches the process's namespace: a socket for another namespace is opened by a
short-lived thread inside it, and a missing namespace is an error, never created.
Kernel errors become CNIError.
"""

import ctypes
import dataclasses
import errno
import functools
import ipaddress
import os
import socket
import threading
import time


from cni import rtdump
from cni.errors import CNIError, KERNEL_FAILURE, LINK_CONFLICT, UNKNOWN_CONTAINER

IFA_F_NODAD, IFA_F_DADFAILED, IFA_F_TENTATIVE, IFA_F_NOPREFIXROUTE = 0x02, 0x08, 0x40, 0x200
RT_SCOPE_LINK = 253
AF_INET, AF_INET6 = 2, 10
CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
RT_TABLE_MAIN = 254
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04


@dataclasses.dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    master: int       # ifindex of the bridge this link is enslaved to, 0 if none
    peer: int         # for a veth: the peer's ifindex (in the peer's namespace)
    up: bool
    hairpin: bool
    isolated: bool


@dataclasses.dataclass(frozen=True)
class Vxlan:
    vni: int
    port: int
    local: str | None
    underlay: int     # ifindex of the link carrying the tunnel, 0 if none
    learning: bool


class NetlinkError(Exception):
    """pyroute2's NetlinkError once the first Namespace has loaded pyroute2 (`_load_pyroute2`): a
    call that needs no netlink (a STATUS, a VERSION, a config error) never pays for importing it.
    No netlink call happens before a Namespace exists, so nothing raises this placeholder."""


IPRoute = None


def _load_pyroute2():
    global IPRoute, NetlinkError
    if IPRoute is None:
        from cni.pyroute2_lite import IPRoute, NetlinkError


def kernel_error(what: str, error: Exception) -> CNIError:
    return CNIError(KERNEL_FAILURE, what, f"{errno.errorcode.get(error.code, error.code)}: {error}")


class Namespace:
    """Netlink operations inside one network namespace (None: this process's own)."""

    def __init__(self, path: str | None = None):
        self.path = path
        _load_pyroute2()
        try:
            self.ipr = IPRoute(fileno=_netlink_socket_in(path).detach()) if path else IPRoute()
        except FileNotFoundError:
            raise CNIError(UNKNOWN_CONTAINER, f"network namespace {path} does not exist") from None
        except (OSError, NetlinkError) as e:
            raise CNIError(UNKNOWN_CONTAINER, f"cannot open network namespace {path}", str(e)) from None

    def close(self):
        self.ipr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # links
    def link(self, name: str | None = None, index: int | None = None) -> Link | None:
        try:
            msgs = self.ipr.link("get", index=index) if index else self.ipr.link("get", ifname=name)
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise kernel_error(f"cannot read link {name or index}", e) from None
        return _to_link(msgs[0])

    def require_absent(self, name: str):
        """LINK_CONFLICT when link `name` exists here (a pod's interface left by an earlier ADD)."""
        if self.link(name) is not None:
            raise CNIError(LINK_CONFLICT, f"interface {name} already exists in {self.path or 'this namespace'}",
                           "DEL the earlier attachment first")

    def links(self) -> list[Link]:
        """Every link: a dump, whose cost grows with the node. Not for a plugin's ADD/DEL/CHECK."""
        return [_to_link(m) for m in self.ipr.get_links()]

    def ports(self, bridge_index: int) -> list[int]:
        """The ifindexes of the links enslaved to a bridge (the kernel filters the dump)."""
        try:
            return rtdump.ports(self.ipr.fileno(), bridge_index)
        except OSError as e:
            raise CNIError(KERNEL_FAILURE, f"cannot list the ports of bridge {bridge_index}", str(e)) from None

    def add_bridge(self, name: str, mtu: int = 0) -> bool:
        """Create a bridge; False when a link of that name already exists (someone else won the race)."""
        kwargs = {"mtu": mtu} if mtu else {}
        try:
            self.ipr.link("add", ifname=name, kind="bridge", **kwargs)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return False
            raise kernel_error(f"cannot create bridge {name}", e) from None
        return True

    def add_veth(self, host_name: str, peer_name: str, peer_netns: str, mtu: int = 0,
                 peer_mac: str | None = None) -> bool:
        """A veth pair whose peer is born inside `peer_netns` (never visible in this namespace);
        False when one of the two names is taken."""
        peer = {"ifname": peer_name, "net_ns_fd": peer_netns}
        kwargs = {}
        if mtu:
            peer["mtu"] = kwargs["mtu"] = mtu
        if peer_mac:
            peer["address"] = peer_mac
        try:
            self.ipr.link("add", ifname=host_name, kind="veth", peer=peer, **kwargs)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return False
            raise kernel_error(f"cannot create veth pair for {peer_name}", e) from None
        return True

    def set_link(self, index: int, **attrs):
        try:
            self.ipr.link("set", index=index, **attrs)
        except NetlinkError as e:
            raise kernel_error(f"cannot set {attrs} on link {index}", e) from None

    def set_bridge_port(self, index: int, hairpin: bool, isolated: bool):
        try:
            self.ipr.brport("set", index=index, mode=int(hairpin), isolated=int(isolated))
        except NetlinkError as e:
            raise kernel_error(f"cannot set bridge port flags on link {index}", e) from None

    def set_bridge_vlan_filtering(self, index: int):
        try:
            self.ipr.link("set", index=index, kind="bridge", br_vlan_filtering=1)
        except NetlinkError as e:
            if e.code == errno.EOPNOTSUPP:
                raise CNIError(KERNEL_FAILURE, "this kernel has no bridge VLAN filtering",
                               "vlan and vlanTrunk need CONFIG_BRIDGE_VLAN_FILTERING") from None
            raise kernel_error("cannot enable VLAN filtering", e) from None

    def vlan(self, op: str, index: int, vid: int, pvid_untagged: bool = False):
        info = {"vid": vid, "flags": ["pvid", "untagged"] if pvid_untagged else []}
        try:
            self.ipr.vlan_filter(op, index=index, vlan_info=info)
        except NetlinkError as e:
            if op == "del" and e.code in (errno.ENOENT, errno.EINVAL):
                return
            raise kernel_error(f"cannot {op} VLAN {vid} on link {index}", e) from None

    def delete_link(self, name: str) -> bool:
        try:
            self.ipr.link("del", ifname=name)
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise kernel_error(f"cannot delete link {name}", e) from None
        return True

    def add_macvlan(self, name: str, master: int, mode: str, netns: str | None = None, mtu: int = 0,
                    mac: str | None = None) -> bool:
        """A macvlan link on `master` (an ifindex here), born inside `netns` when given, down;
        False when the name is taken there."""
        kwargs = {"net_ns_fd": netns} if netns else {}
        if mtu:
            kwargs["mtu"] = mtu
        if mac:
            kwargs["address"] = mac
        try:
            self.ipr.link("add", ifname=name, kind="macvlan", link=master, macvlan_mode=mode, **kwargs)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return False
            raise kernel_error(f"cannot create macvlan link on link {master}", e) from None
        return True

    def alias(self, index: int) -> str | None:
        """The link's ifalias (host-device keeps a moved link's original name there)."""
        try:
            return self.ipr.link("get", index=index)[0].get_attr("IFLA_IFALIAS") or None
        except NetlinkError as e:
            raise kernel_error(f"cannot read link {index}", e) from None

    def move_link(self, index: int, netns: str, name: str, where: str | None = None):
        """Move the link into the namespace at `netns` (a path, described as `where` in errors) and
        name it `name` there. The kernel moves it under its current name when that is free there and
        renames it afterwards; it uses `name` straight away only when the current name is taken."""
        try:
            self.ipr.link("set", index=index, net_ns_fd=netns, ifname=name)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                raise CNIError(LINK_CONFLICT, f"cannot move link {index} as {name}",
                               f"a link named {name} already exists in {where or netns}") from None
            raise kernel_error(f"cannot move link {index} into {netns}", e) from None

    def macvlan_mode(self, index: int) -> str | None:
        """The mode of a macvlan link (bridge, private, vepa, passthru, source); None for other links."""
        try:
            info = self.ipr.link("get", index=index)[0].get_attr("IFLA_LINKINFO")
        except NetlinkError as e:
            raise kernel_error(f"cannot read link {index}", e) from None
        if not info or info.get_attr("IFLA_INFO_KIND") != "macvlan":
            return None
        return info.get_attr("IFLA_INFO_DATA").get_attr("IFLA_MACVLAN_MODE")

    # addresses
    def addresses(self, index: int) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        """The link's addresses, filtered by the kernel (a node's veths carry an IPv6 link-local
        address each: a full dump grows with the pods)."""
        return [ipaddress.ip_interface(f"{address}/{prefixlen}")
                for family in (AF_INET, AF_INET6) for address, prefixlen, _ in self._addresses(family, index)]

    def _addresses(self, family: int, index: int) -> list[tuple[str, int, int]]:
        try:
            return rtdump.addresses(self.ipr.fileno(), family, index)
        except OSError as e:
            raise CNIError(KERNEL_FAILURE, f"cannot read the addresses of link {index}", str(e)) from None

    def add_address(self, index: int, address: str, nodad: bool = True, prefix_route: bool = True):
        """`prefix_route` False: no route to the address's subnet comes with it."""
        iface = ipaddress.ip_interface(address)
        flags = (IFA_F_NODAD if nodad and iface.version == 6 else 0) | (0 if prefix_route else IFA_F_NOPREFIXROUTE)
        extra = {"flags": flags} if flags else {}
        if iface.version == 4 and iface.network.prefixlen < 31:   # as `ip addr add ... brd +` and the reference
            extra["broadcast"] = str(iface.network.broadcast_address)
        try:
            self.ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra)
        except NetlinkError as e:
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
        iface = ipaddress.ip_interface(address)
        try:
            self.ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                raise kernel_error(f"cannot remove address {address}", e) from None

    # routes
    def routes(self, index: int | None = None, families=(AF_INET, AF_INET6)) -> list[tuple[str, str | None, int]]:
        """(dst CIDR, gateway or None, oif) of the main table, of link `index` if given (filtered by
        the kernel: the main table holds an IPv6 link-local route per veth)."""
        try:
            return [route for family in families
                    for route in rtdump.routes(self.ipr.fileno(), family, RT_TABLE_MAIN, index)]
        except OSError as e:
            raise CNIError(KERNEL_FAILURE, "cannot read the routing table", str(e)) from None

    def add_route(self, index: int, dst: str, gateway: str | None = None, source: str | None = None,
                  link_scope: bool = False):
        """`link_scope`: the destination is directly on the link (as `ip route` marks a route without a gateway)."""
        net = ipaddress.ip_network(dst, strict=False)
        kwargs = {"dst": str(net), "oif": index}
        if gateway:
            kwargs["gateway"] = gateway
        if source:
            kwargs["prefsrc"] = source
        if link_scope:
            kwargs["scope"] = RT_SCOPE_LINK
        try:
            self.ipr.route("add", **kwargs)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise kernel_error(f"cannot add route to {dst}" + (f" via {gateway}" if gateway else ""), e) from None

    # VXLAN tunnel endpoints and their forwarding entries (neighbours, FDB, onlink routes)
    def vxlan(self, name: str) -> Vxlan | None:
        """The VXLAN settings of link `name`; None when it is missing or not a vxlan link."""
        try:
            msg = self.ipr.link("get", ifname=name)[0]
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise kernel_error(f"cannot read link {name}", e) from None
        info = msg.get_attr("IFLA_LINKINFO")
        if not info or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            return None
        data = info.get_attr("IFLA_INFO_DATA")
        return Vxlan(vni=data.get_attr("IFLA_VXLAN_ID"), port=data.get_attr("IFLA_VXLAN_PORT"),
                     local=data.get_attr("IFLA_VXLAN_LOCAL"), underlay=data.get_attr("IFLA_VXLAN_LINK") or 0,
                     learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")))

    def add_vxlan(self, name: str, vni: int, port: int, local: str, underlay: int, mtu: int, mac: str) -> bool:
        """A unicast VTEP without MAC learning; False when a link of that name already exists."""
        try:
            self.ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=port, vxlan_local=local,
                          vxlan_link=underlay, vxlan_learning=0, mtu=mtu, address=mac)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return False
            raise kernel_error(f"cannot create vxlan link {name}", e) from None
        return True

    def address_owner(self, address: str) -> int | None:
        """The ifindex holding `address`, None if no link does."""
        family = AF_INET if ipaddress.ip_address(address).version == 4 else AF_INET6
        for m in self.ipr.get_addr(family=family):
            if m.get_attr("IFA_ADDRESS") == address:
                return m["index"]
        return None

    def default_route_link(self) -> int | None:
        """The output link of the main table's IPv4 default route."""
        for dst, _, oif in self.routes(families=(AF_INET,)):
            if dst == "0.0.0.0/0" and oif:
                return oif
        return None

    def permanent_neighbours(self, index: int) -> dict[str, str]:
        """IPv4 neighbour entries of state PERMANENT on the link: {address: MAC}."""
        return {m.get_attr("NDA_DST"): m.get_attr("NDA_LLADDR")
                for m in self.ipr.neigh("dump", ifindex=index, family=AF_INET)
                if m["state"] & NUD_PERMANENT and m.get_attr("NDA_LLADDR")}

    def set_permanent_neighbour(self, index: int, address: str, mac: str):
        try:
            self.ipr.neigh("replace", ifindex=index, dst=address, lladdr=mac, state=NUD_PERMANENT)
        except NetlinkError as e:
            raise kernel_error(f"cannot set neighbour {address} -> {mac}", e) from None

    def delete_neighbour(self, index: int, address: str):
        try:
            self.ipr.neigh("del", ifindex=index, dst=address)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.ESRCH):
                raise kernel_error(f"cannot delete neighbour {address}", e) from None

    def remote_fdb(self, index: int) -> set[tuple[str, str]]:
        """(MAC, remote IP) of the link's FDB entries that point at a remote (a VTEP's unicast entries)."""
        return {(m.get_attr("NDA_LLADDR"), m.get_attr("NDA_DST"))
                for m in self.ipr.fdb("dump", ifindex=index) if m.get_attr("NDA_DST")}

    def set_remote_fdb(self, index: int, mac: str, remote: str):
        try:
            self.ipr.fdb("replace", ifindex=index, lladdr=mac, dst=remote,
                         state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
        except NetlinkError as e:
            raise kernel_error(f"cannot set FDB entry {mac} -> {remote}", e) from None

    def delete_remote_fdb(self, index: int, mac: str, remote: str):
        try:
            self.ipr.fdb("del", ifindex=index, lladdr=mac, dst=remote)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.ESRCH):
                raise kernel_error(f"cannot delete FDB entry {mac} -> {remote}", e) from None

    def replace_route(self, index: int, dst: str, gateway: str, onlink: bool = False):
        """Add the route, or make the existing route to `dst` this one."""
        try:
            self.ipr.route("replace", dst=str(ipaddress.ip_network(dst)), gateway=gateway, oif=index,
                           **({"flags": RTNH_F_ONLINK} if onlink else {}))
        except NetlinkError as e:
            raise kernel_error(f"cannot set route to {dst} via {gateway}", e) from None

    def delete_route(self, index: int, dst: str):
        try:
            self.ipr.route("del", dst=str(ipaddress.ip_network(dst)), oif=index, table=RT_TABLE_MAIN)
        except NetlinkError as e:
            if e.code not in (errno.ESRCH, errno.ENOENT):
                raise kernel_error(f"cannot delete route to {dst}", e) from None


def _netlink_socket_in(path: str) -> socket.socket:
    """An rtnetlink socket bound to the namespace at `path` (see run_in: nothing is forked;
    pyroute2's own netns sockets fork a helper, ~10 ms against ~1.5 ms)."""
    return run_in(path, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))


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


def _to_link(msg) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else ""
    port = info.get_attr("IFLA_INFO_SLAVE_DATA") if info else None
    hairpin = bool(port.get_attr("IFLA_BRPORT_MODE")) if port else False
    isolated = bool(port.get_attr("IFLA_BRPORT_ISOLATED")) if port else False
    return Link(index=msg["index"], name=msg.get_attr("IFLA_IFNAME"), kind=kind or "",
                mac=msg.get_attr("IFLA_ADDRESS") or "", mtu=msg.get_attr("IFLA_MTU") or 0,
                master=msg.get_attr("IFLA_MASTER") or 0, peer=msg.get_attr("IFLA_LINK") or 0,
                up=bool(msg["flags"] & 1), hairpin=hairpin, isolated=isolated)
