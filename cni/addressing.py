"""A pod interface's addresses and routes from an IPAM result: set them, and check them (CHECK)."""

import ipaddress

from cni.errors import CNIError, CHECK_FAILED
from cni.netlink import Namespace


def configure(ns: Namespace, index: int, ips: list, routes: list, dad: bool = False):
    """Bring the link up, add `ips` (IPv6 with duplicate address detection when `dad`, then wait
    for it), then `routes`; a route without `gw` goes via its family's IPAM gateway, if any."""
    ns.set_link(index, state="up")
    for ip in ips:
        ns.add_address(index, ip["address"], nodad=not dad)
    if dad and any(ipaddress.ip_interface(ip["address"]).version == 6 for ip in ips):
        ns.wait_for_dad(index)
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
