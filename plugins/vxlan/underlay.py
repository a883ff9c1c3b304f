"""The underlay: the host address and link that carry the tunnel."""

import dataclasses

from cni.errors import CNIError, NOT_AVAILABLE
from cni.netlink import Namespace


@dataclasses.dataclass(frozen=True)
class Underlay:
    ip: str
    index: int
    mtu: int


def find(host: Namespace, ip: str | None) -> Underlay:
    """The link holding `ip`; with no `ip`, the link of the IPv4 default route and its first IPv4 address."""
    if ip:
        index = host.address_owner(ip)
        if index is None:
            raise CNIError(NOT_AVAILABLE, f"underlay address {ip} is not on any link of this host",
                           "set 'underlayIP' to one of this host's addresses")
        return Underlay(ip, index, host.link(index=index).mtu)
    index = host.default_route_link()
    if index is None:
        raise CNIError(NOT_AVAILABLE, "no IPv4 default route to find the underlay address by",
                       "set 'underlayIP' in the network config")
    addresses = [a for a in host.addresses(index) if a.version == 4 and not a.ip.is_link_local]
    if not addresses:
        link = host.link(index=index)
        raise CNIError(NOT_AVAILABLE, f"the default route's link {link.name} has no IPv4 address",
                       "set 'underlayIP' in the network config")
    return Underlay(str(addresses[0].ip), index, host.link(index=index).mtu)

