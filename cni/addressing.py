"""A pod interface's addresses and routes from an IPAM result: set them, and check them (CHECK)."""

import ipaddress

from cni import result as results
from cni.errors import CNIError, CHECK_FAILED
from cni.netlink import Link, Namespace


def configure(ns: Namespace, index: int, ips: list, routes: list, dad: bool = False, prefix_route: bool = True):
    """As the reference's ConfigureIface: `arp_notify=1` when there is an IPv4 address (a gratuitous
    ARP as the link comes up, so neighbours forget a previous holder of the address), `ips` added
    (IPv4 with its broadcast; IPv6 with duplicate address detection when `dad`), the link up (then
    wait for DAD), then `routes` (see add_routes). `prefix_route` False: the addresses come without
    a route to their subnet (ptp routes the subnet through its gateway)."""
    if any(ipaddress.ip_interface(ip["address"]).version == 4 for ip in ips):
        ns.set_ipv4_conf(index, "arp_notify", 1)
    for ip in ips:
        ns.add_address(index, ip["address"], nodad=not dad, prefix_route=prefix_route)
    ns.set_link(index, state="up")
    if dad and any(ipaddress.ip_interface(ip["address"]).version == 6 for ip in ips):
        ns.wait_for_dad(index)
    add_routes(ns, index, ips, routes)


def host_prefix(address: str) -> str:
    """An address (or the address of an interface, 10.0.0.5/24) alone, as a /32 or /128."""
    ip = ipaddress.ip_interface(address).ip
    return f"{ip}/{ip.max_prefixlen}"


def add_routes(ns: Namespace, index: int, ips: list, routes: list):
    """`routes` on the link; a route without `gw` goes via its family's gateway in `ips`, if any."""
    gateways = {ipaddress.ip_interface(ip["address"]).version: ip.get("gateway") for ip in ips}
    for route in routes:
        version = ipaddress.ip_network(route["dst"], strict=False).version
        ns.add_route(index, route["dst"], route.get("gw") or gateways.get(version))


def check(ns: Namespace, index: int, ifname: str, ips: list, routes: list):
    """CHECK_FAILED naming the first address of `ips` missing from the link, or route of `routes`
    missing from it."""
    present = ns.addresses(index)
    for ip in ips:
        if ipaddress.ip_interface(ip["address"]) not in present:
            raise CNIError(CHECK_FAILED, f"address {ip['address']} is missing from {ifname}")
    nets = {ipaddress.ip_network(dst, strict=False) for dst, _, _ in ns.routes(index)}
    for route in routes:
        if ipaddress.ip_network(route["dst"], strict=False) not in nets:
            raise CNIError(CHECK_FAILED, f"route to {route['dst']} is missing from {ns.path}")


class Expected:
    """What CHECK compares with: the pod interface prevResult names, its addresses, the routes."""
    __slots__ = ("interface", "ips", "routes")

    def __init__(self, interface: dict, ips: list, routes: list):
        self.interface = interface
        self.ips = ips
        self.routes = routes


def prev_result_for_check(request) -> dict:
    """prevResult, which CHECK cannot do without, in the current shape."""
    prev = request.config.get("prevResult")
    if not prev:
        raise CNIError(CHECK_FAILED, "CHECK needs prevResult", "the runtime must pass the ADD result")
    return results.from_any(prev, request.version)


def expected(request) -> Expected:
    """From prevResult: the interface named CNI_IFNAME in sandbox CNI_NETNS (CHECK_FAILED without one)."""
    prev = prev_result_for_check(request)
    entry = next((i for i in prev["interfaces"]
                  if i.get("name") == request.ifname and i.get("sandbox") == request.netns), None)
    if entry is None:
        raise CNIError(CHECK_FAILED, f"prevResult has no interface {request.ifname} in sandbox {request.netns}")
    index = prev["interfaces"].index(entry)
    return Expected(entry, [ip for ip in prev["ips"] if ip.get("interface", index) == index], prev["routes"])


def check_interface(ns: Namespace, link: Link, want: Expected):
    """CHECK_FAILED when the link's MAC, addresses or routes differ from what prevResult says."""
    mac = want.interface.get("mac")
    if mac and link.mac != mac.lower():
        raise CNIError(CHECK_FAILED, f"{link.name} has MAC {link.mac}, prevResult says {mac}")
    check(ns, link.index, link.name, want.ips, want.routes)
