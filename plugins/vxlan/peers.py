"""Peer hosts as the kernel sees them: per peer, a route to its pod subnet through its VTEP address,
a permanent neighbour entry (VTEP address -> VTEP MAC) and a permanent FDB entry (VTEP MAC -> underlay IP).

Everything of these kinds on our VTEP is ours, so syncing is stateless: add what is missing,
replace what differs, remove what no peer accounts for.
"""

import dataclasses
import ipaddress

from cni.netlink import Namespace

from plugins.vxlan import vtep


@dataclasses.dataclass(frozen=True)
class Peer:
    underlay_ip: str
    subnet: ipaddress.IPv4Network
    vtep_mac: str

    @classmethod
    def derived(cls, underlay_ip: str, subnet: ipaddress.IPv4Network, vni: int) -> "Peer":
        """A peer whose VTEP MAC follows from its underlay address (static peers)."""
        return cls(underlay_ip, subnet, vtep.mac_for(underlay_ip, vni))

    @property
    def vtep_ip(self) -> str:
        return str(vtep.address_for(self.subnet))


@dataclasses.dataclass(frozen=True)
class Entries:
    routes: dict        # subnet CIDR -> gateway (the peer's VTEP address)
    neighbours: dict    # VTEP address -> VTEP MAC
    fdb: set            # (VTEP MAC, underlay IP)


def wanted(peers) -> Entries:
    return Entries(routes={str(p.subnet): p.vtep_ip for p in peers},
                   neighbours={p.vtep_ip: p.vtep_mac for p in peers},
                   fdb={(p.vtep_mac, p.underlay_ip) for p in peers})


def present(host: Namespace, index: int) -> Entries:
    return Entries(routes={dst: gw for dst, gw, _ in host.routes(index) if gw},
                   neighbours=host.permanent_neighbours(index),
                   fdb=host.remote_fdb(index))


def sync(host: Namespace, index: int, peers) -> None:
    """Make the entries on VTEP `index` exactly those of `peers`. Forwarding entries go in before
    the route that uses them, and out after it."""
    want, have = wanted(peers), present(host, index)
    for dst in have.routes.keys() - want.routes.keys():
        host.delete_route(index, dst)
    for address in have.neighbours.keys() - want.neighbours.keys():
        host.delete_neighbour(index, address)
    for mac, remote in have.fdb - want.fdb:
        host.delete_remote_fdb(index, mac, remote)
    for mac, remote in want.fdb - have.fdb:
        host.set_remote_fdb(index, mac, remote)
    for address, mac in want.neighbours.items():
        if have.neighbours.get(address) != mac:
            host.set_permanent_neighbour(index, address, mac)
    for dst, gateway in want.routes.items():
        if have.routes.get(dst) != gateway:
            host.replace_route(index, dst, gateway, onlink=True)


def missing(host: Namespace, index: int, peers) -> list[str]:
    """The entries of `peers` that the kernel lacks or holds differently."""
    want, have = wanted(peers), present(host, index)
    found = [f"route to {dst} via {gw}" for dst, gw in want.routes.items() if have.routes.get(dst) != gw]
    found += [f"neighbour {ip} -> {mac}" for ip, mac in want.neighbours.items() if have.neighbours.get(ip) != mac]
    found += [f"FDB entry {mac} -> {remote}" for mac, remote in sorted(want.fdb - have.fdb)]
    return found
