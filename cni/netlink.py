"""A small typed layer over pyroute2's IPRoute: one open rtnetlink socket per namespace.

Never switches the process's namespace: pyroute2 opens the socket inside the target
(`flags=0` so a missing namespace is an error, not created). Kernel errors become CNIError.
"""

import contextlib
import dataclasses
import errno
import ipaddress

from pyroute2 import IPRoute, NetlinkError

from cni.errors import CNIError, KERNEL_FAILURE, UNKNOWN_CONTAINER

IFA_F_NODAD = 0x02
AF_INET, AF_INET6 = 2, 10
RT_TABLE_MAIN = 254


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


def kernel_error(what: str, error: NetlinkError) -> CNIError:
    return CNIError(KERNEL_FAILURE, what, f"{errno.errorcode.get(error.code, error.code)}: {error}")


class Namespace:
    """Netlink operations inside one network namespace (None: this process's own)."""

    def __init__(self, path: str | None = None):
        self.path = path
        try:
            self.ipr = IPRoute(netns=path, flags=0) if path else IPRoute()
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

    def links(self) -> list[Link]:
        return [_to_link(m) for m in self.ipr.get_links()]

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

    def add_veth(self, host_name: str, peer_name: str, peer_netns: str, mtu: int = 0, peer_mac: str | None = None):
        """A veth pair whose peer is born inside `peer_netns` (never visible in this namespace)."""
        peer = {"ifname": peer_name, "net_ns_fd": peer_netns}
        kwargs = {}
        if mtu:
            peer["mtu"] = kwargs["mtu"] = mtu
        if peer_mac:
            peer["address"] = peer_mac
        self.ipr.link("add", ifname=host_name, kind="veth", peer=peer, **kwargs)

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

    # addresses
    def addresses(self, index: int) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        return [ipaddress.ip_interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}")
                for m in self.ipr.get_addr(index=index)]

    def add_address(self, index: int, address: str, nodad: bool = True):
        iface = ipaddress.ip_interface(address)
        flags = IFA_F_NODAD if nodad and iface.version == 6 else 0
        try:
            self.ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                          **({"flags": flags} if flags else {}))
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise kernel_error(f"cannot add address {address}", e) from None

    def delete_address(self, index: int, address: str):
        iface = ipaddress.ip_interface(address)
        try:
            self.ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                raise kernel_error(f"cannot remove address {address}", e) from None

    # routes
    def routes(self, index: int | None = None) -> list[tuple[str, str | None, int]]:
        """(dst CIDR, gateway or None, oif) of the main table."""
        out = []
        for family in (AF_INET, AF_INET6):
            for m in self.ipr.get_routes(family=family, table=RT_TABLE_MAIN):
                oif = m.get_attr("RTA_OIF")
                if index is not None and oif != index:
                    continue
                dst = m.get_attr("RTA_DST") or ("0.0.0.0" if family == AF_INET else "::")
                out.append((f"{dst}/{m['dst_len']}", m.get_attr("RTA_GATEWAY"), oif))
        return out

    def add_route(self, index: int, dst: str, gateway: str | None = None, **extra):
        net = ipaddress.ip_network(dst, strict=False)
        kwargs = {"dst": str(net), "oif": index, **extra}
        if gateway:
            kwargs["gateway"] = gateway
        try:
            self.ipr.route("add", **kwargs)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise kernel_error(f"cannot add route to {dst}" + (f" via {gateway}" if gateway else ""), e) from None


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


@contextlib.contextmanager
def opened(path: str | None = None):
    ns = Namespace(path)
    try:
        yield ns
    finally:
        ns.close()
