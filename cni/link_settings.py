"""The settings of one link that tuning changes and restores: MAC, MTU, promiscuous and
all-multicast mode, transmit queue length."""

import dataclasses

from cni import netlink
from cni.errors import CNIError, UNKNOWN_CONTAINER

IFF_PROMISC = 0x100
IFF_ALLMULTI = 0x200
FIELDS = ("mac", "mtu", "promisc", "allmulti", "txqlen")


@dataclasses.dataclass(frozen=True)
class Settings:
    index: int
    mac: str
    mtu: int
    promisc: bool
    allmulti: bool
    txqlen: int

    def values(self) -> dict:
        return {f: getattr(self, f) for f in FIELDS}


def read(ns: netlink.Namespace, ifname: str) -> Settings:
    link = ns.link(ifname)
    if link is None:
        raise CNIError(UNKNOWN_CONTAINER, f"interface {ifname} not found in {ns.path}")
    return Settings(index=link.index, mac=link.mac, mtu=link.mtu, promisc=bool(link.flags & IFF_PROMISC),
                    allmulti=bool(link.flags & IFF_ALLMULTI), txqlen=link.txqlen)


def apply(ns: netlink.Namespace, index: int, values: dict):
    """Set the given fields (a subset of FIELDS) on the link, one netlink request each, so that a
    refusal names the field."""
    for field, value in values.items():
        if field == "mac":
            ns.set_link(index, address=value)
        elif field == "mtu":
            ns.set_link(index, mtu=value)
        elif field == "txqlen":
            ns.set_link(index, txqlen=value)
        else:
            flag = IFF_PROMISC if field == "promisc" else IFF_ALLMULTI
            ns.set_link(index, flags=flag if value else 0, change=flag)
