"""Traffic control in one namespace: token-bucket shaping of a link's egress, an ifb device fed by a
redirect of a link's ingress, and an htb variant that leaves chosen subnets unshaped."""

import dataclasses
import errno
import ipaddress

from cni.pyroute2_lite import NetlinkError
from pyroute2.netlink.rtnl.tcmsg import common as tc_common   # after the line above: no pyroute2 __init__

from cni import log, netlink
from cni.errors import CNIError, KERNEL_FAILURE

ROOT_HANDLE = 0x10000        # 1:
INGRESS_HANDLE = 0xFFFF0000  # ffff:
SHAPED_CLASS = 0x10001       # 1:1
UNSHAPED_CLASS = 0x10002     # 1:2
UNSHAPED_RATE = 100 * 10**9 // 8     # bytes/s: "as fast as the link goes"
LATENCY = "25ms"             # how long a packet may wait in the bucket (sets the queue limit)
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
# Offsets of the source and destination addresses in the IPv4 and IPv6 headers.
_ADDRESS_OFFSET = {(4, "src"): 12, (4, "dst"): 16, (6, "src"): 8, (6, "dst"): 24}


def bucket(rate_bits: int, burst_bits: int) -> tuple[int, int]:
    """(rate, burst) in bytes as the kernel takes them. The kernel holds a bucket as the time its
    burst takes at the rate, in 32 bits of scheduler ticks: a burst beyond that (containerd asks for
    2^32 - 1 bits whatever the rate) is cut to the largest that fits, not wrapped around."""
    rate = rate_bits // 8
    largest = int(rate * (2**32 - 1) / (tc_common.tick_in_usec * tc_common.TIME_UNITS_PER_SEC))
    burst = burst_bits // 8
    if burst > largest:
        log.logger().info("tc: burst of %d bytes at %d bytes/s cut to %d, the most the kernel holds", burst, rate, largest)
        burst = largest
    return rate, burst


@dataclasses.dataclass(frozen=True)
class Qdisc:
    kind: str
    handle: int
    parent: int
    rate: int          # bytes/s of a tbf, else 0


def _kernel(what: str):
    def wrap(e: NetlinkError):
        if e.code == errno.EOPNOTSUPP or e.code == errno.ENOENT and "qdisc" in what:
            return CNIError(KERNEL_FAILURE, f"{what}: this kernel lacks the tc module", str(e))
        return netlink.kernel_error(what, e)
    return wrap


def qdiscs(ns: netlink.Namespace, index: int) -> list[Qdisc]:
    out = []
    for m in ns.ipr.get_qdiscs(index=index):
        kind = m.get_attr("TCA_KIND")
        rate = 0
        if kind == "tbf":
            parms = m.get_nested("TCA_OPTIONS", "TCA_TBF_PARMS")
            rate = parms["rate"] if parms else 0
        out.append(Qdisc(kind, m["handle"], m["parent"], rate))
    return out


def htb_class_rates(ns: netlink.Namespace, index: int) -> dict[int, int]:
    """{class id: rate in bytes/s} of the link's htb classes."""
    out = {}
    for m in ns.ipr.get_classes(index=index):
        parms = m.get_nested("TCA_OPTIONS", "TCA_HTB_PARMS")
        if parms:
            out[m["handle"]] = m.get_nested("TCA_OPTIONS", "TCA_HTB_RATE64") or parms["rate"]
    return out


def shape(ns: netlink.Namespace, index: int, rate_bits: int, burst_bits: int):
    """A token bucket as the root qdisc of the link: what the link sends is held to the rate."""
    rate, burst = bucket(rate_bits, burst_bits)
    try:
        ns.ipr.tc("add", "tbf", index, ROOT_HANDLE, rate=rate, burst=burst, latency=LATENCY)
    except NetlinkError as e:
        raise _kernel(f"cannot add a tbf qdisc on link {index}")(e) from None


def shape_subnets(ns: netlink.Namespace, index: int, rate_bits: int, burst_bits: int, subnets, shaped: bool,
                  match: str):
    """An htb root qdisc: traffic whose `match` address ("src"/"dst") is in `subnets` goes to the
    shaped class when `shaped`, else to the unshaped one; all other traffic to the other class."""
    listed, other = (SHAPED_CLASS, UNSHAPED_CLASS) if shaped else (UNSHAPED_CLASS, SHAPED_CLASS)
    rate, burst = bucket(rate_bits, burst_bits)
    try:
        ns.ipr.tc("add", "htb", index, ROOT_HANDLE, default=other & 0xFFFF)
        ns.ipr.tc("add-class", "htb", index, SHAPED_CLASS, parent=ROOT_HANDLE, rate=rate, burst=burst)
        ns.ipr.tc("add-class", "htb", index, UNSHAPED_CLASS, parent=ROOT_HANDLE, rate=UNSHAPED_RATE)
        for prio, subnet in enumerate(subnets, start=1):
            net = ipaddress.ip_network(subnet)
            ns.ipr.tc("add-filter", "u32", index, parent=ROOT_HANDLE, prio=prio,
                      protocol=ETH_P_IP if net.version == 4 else ETH_P_IPV6, target=listed,
                      keys=_address_keys(net, match))
    except NetlinkError as e:
        raise _kernel(f"cannot set up htb shaping on link {index}")(e) from None


def _address_keys(net, match: str) -> list[str]:
    """u32 keys ("value/mask+offset", 32-bit words) matching the network's prefix."""
    offset = _ADDRESS_OFFSET[(net.version, match)]
    packed = net.network_address.packed
    mask = net.netmask.packed
    keys = []
    for word in range(len(packed) // 4):
        m = int.from_bytes(mask[4 * word:4 * word + 4], "big")
        if m:
            v = int.from_bytes(packed[4 * word:4 * word + 4], "big")
            keys.append(f"0x{v:08x}/0x{m:08x}+{offset + 4 * word}")
    return keys or [f"0x0/0x0+{offset}"]


def redirect_ingress(ns: netlink.Namespace, index: int, target: int):
    """Everything `index` receives is handed to link `target` (an ifb) to leave by it."""
    try:
        ns.ipr.tc("add", "ingress", index, INGRESS_HANDLE)
        ns.ipr.tc("add-filter", "u32", index, parent=INGRESS_HANDLE, prio=1, protocol=ETH_P_ALL,
                  target=0x10001, keys=["0x0/0x0+0"],
                  action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target})
    except NetlinkError as e:
        raise _kernel(f"cannot redirect the ingress of link {index}")(e) from None


def remove_root(ns: netlink.Namespace, index: int):
    _delete(ns, index, "root", ROOT_HANDLE)


def remove_ingress(ns: netlink.Namespace, index: int):
    _delete(ns, index, "ingress", INGRESS_HANDLE)


def _delete(ns: netlink.Namespace, index: int, what: str, handle: int):
    for q in qdiscs(ns, index):
        if q.handle != handle:
            continue
        try:
            ns.ipr.tc("del", index=index, handle=handle, parent=q.parent)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise netlink.kernel_error(f"cannot remove the {what} qdisc of link {index}", e) from None


def add_ifb(ns: netlink.Namespace, name: str, mtu: int) -> int:
    """A new ifb device, up; its ifindex. An existing one of that name is reused."""
    try:
        ns.ipr.link("add", ifname=name, kind="ifb", mtu=mtu)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise _kernel(f"cannot create ifb device {name}")(e) from None
    link = ns.link(name)
    if link is None or link.kind != "ifb":
        raise CNIError(KERNEL_FAILURE, f"{name} exists and is not an ifb device")
    ns.set_link(link.index, state="up")
    return link.index


def delete_ifb(ns: netlink.Namespace, name: str):
    """Delete the ifb device `name`; a link of that name of another kind is left alone."""
    link = ns.link(name)
    if link is not None and link.kind == "ifb":
        ns.delete_link(name)
