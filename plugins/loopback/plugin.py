"""loopback: brings the pod's `lo` up and reports its addresses, as the reference does.

CNI_IFNAME is not consulted: a namespace has one loopback link, and it is always `lo`.
"""

import ipaddress

from cni import netlink, result as results, skel
from cni.errors import CHECK_FAILED, CNIError, UNKNOWN_CONTAINER

LOOPBACK = "lo"
LOOPBACK_MAC = "00:00:00:00:00:00"


def add(request: skel.Request) -> dict:
    with netlink.Namespace(request.netns) as container:
        lo = _loopback(container, request.netns)
        container.set_link(lo.index, state="up")
        # The kernel gives lo its addresses when it comes up; an IPv6-disabled namespace has no ::1.
        addresses = sorted(container.addresses(lo.index), key=lambda a: a.version)
    interfaces = [{"name": LOOPBACK, "mac": LOOPBACK_MAC, "sandbox": request.netns}]
    return results.new(interfaces, [{"interface": 0, "address": str(a)} for a in addresses])


def delete(request: skel.Request):
    if not request.netns:
        return
    try:
        with netlink.Namespace(request.netns) as container:
            lo = container.link(LOOPBACK)
            if lo is not None:
                container.set_link(lo.index, state="down")
    except CNIError as e:
        if e.code != UNKNOWN_CONTAINER:
            raise   # a namespace that is gone took its lo with it


def check(request: skel.Request):
    with netlink.Namespace(request.netns) as container:
        lo = _loopback(container, request.netns)
        if not lo.up:
            raise CNIError(CHECK_FAILED, "loopback interface is down", f"lo in {request.netns}")
        present = container.addresses(lo.index)
    prev = results.from_any(request.config["prevResult"], request.version) if request.config.get("prevResult") else None
    for ip in (prev or {}).get("ips", []):
        if ipaddress.ip_interface(ip["address"]) not in present:
            raise CNIError(CHECK_FAILED, f"address {ip['address']} is missing from lo in {request.netns}")


def _loopback(container: netlink.Namespace, netns: str) -> netlink.Link:
    lo = container.link(LOOPBACK)
    if lo is None:
        raise CNIError(UNKNOWN_CONTAINER, f"no loopback interface in {netns}")
    return lo


def _nothing(request: skel.Request):
    """STATUS and GC: loopback keeps no state and needs nothing to be ready."""


PLUGIN = skel.Plugin(name="loopback", add=add, delete=delete, check=check, status=_nothing, gc=_nothing)
