"""A host's VXLAN tunnel endpoint: what it should be (Spec), and making the kernel's match it.

Flannel-style addressing: the VTEP of the host owning pod subnet 10.244.3.0/24 holds 10.244.3.0/32,
and its MAC is a function of the host's underlay address and the VNI, so every peer can compute it.
"""

import dataclasses
import hashlib
import ipaddress

from cni.errors import CNIError, LINK_CONFLICT
from cni.netlink import Namespace

# Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8) headers.
OVERHEAD = 50


def mac_for(underlay_ip: str, vni: int) -> str:
    """A locally administered unicast MAC derived from (underlay address, VNI)."""
    digest = bytearray(hashlib.sha256(f"{ipaddress.ip_address(underlay_ip)}/{vni}".encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in digest)


def address_for(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The VTEP address of the host owning `subnet`: the subnet's network address."""
    return subnet.network_address


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    vni: int
    port: int
    underlay_ip: str
    underlay_index: int
    mtu: int
    subnet: ipaddress.IPv4Network      # this host's pod subnet

    @property
    def mac(self) -> str:
        return mac_for(self.underlay_ip, self.vni)

    @property
    def address(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{address_for(self.subnet)}/32")


def ensure(host: Namespace, spec: Spec) -> tuple[int, bool]:
    """The VTEP as `spec` says, up. A vxlan link of that name with other tunnel settings is replaced.
    Returns (its ifindex, created)."""
    current = host.vxlan(spec.name)
    if current is None and host.link(spec.name) is not None:
        raise CNIError(LINK_CONFLICT, f"{spec.name} already exists but is not a vxlan link",
                       "choose another 'vtep' name or remove the link")
    if current is not None and _tunnel_differs(current, spec):
        host.delete_link(spec.name)
        current = None
    created = current is None and host.add_vxlan(spec.name, spec.vni, spec.port, spec.underlay_ip,
                                                 spec.underlay_index, spec.mtu, spec.mac)
    link = host.link(spec.name)
    if link.mtu != spec.mtu:
        host.set_link(link.index, mtu=spec.mtu)
    if link.mac != spec.mac:
        host.set_link(link.index, address=spec.mac)
    for address in host.addresses(link.index):
        if address.version == 4 and address != spec.address:
            host.delete_address(link.index, str(address))
    host.add_address(link.index, str(spec.address))
    host.set_link(link.index, state="up")
    return link.index, created


def problems(host: Namespace, spec: Spec) -> list[str]:
    """How the kernel's VTEP differs from `spec` (empty when it matches)."""
    current = host.vxlan(spec.name)
    if current is None:
        return [f"VTEP {spec.name} is missing"]
    found = []
    if _tunnel_differs(current, spec):
        found.append(f"VTEP {spec.name} has VNI {current.vni}, port {current.port}, local {current.local}; "
                     f"expected VNI {spec.vni}, port {spec.port}, local {spec.underlay_ip}")
    link = host.link(spec.name)
    if link.mtu != spec.mtu:
        found.append(f"VTEP {spec.name} has MTU {link.mtu}, expected {spec.mtu}")
    if link.mac != spec.mac:
        found.append(f"VTEP {spec.name} has MAC {link.mac}, expected {spec.mac}")
    if not link.up:
        found.append(f"VTEP {spec.name} is down")
    if spec.address not in host.addresses(link.index):
        found.append(f"VTEP {spec.name} lacks address {spec.address}")
    return found


def _tunnel_differs(current, spec: Spec) -> bool:
    return (current.vni, current.port, current.local, current.underlay, current.learning) != \
        (spec.vni, spec.port, spec.underlay_ip, spec.underlay_index, False)
