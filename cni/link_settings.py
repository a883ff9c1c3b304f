"""The settings of one link that tuning changes and restores: MAC, MTU, promiscuous and
all-multicast mode, transmit queue length."""

import dataclasses

from cni.pyroute2_lite import NetlinkError

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
    try:
        msg = ns.ipr.link("get", ifname=ifname)[0]
    except NetlinkError as e:
        raise CNIError(UNKNOWN_CONTAINER, f"interface {ifname} not found in {ns.path}", str(e)) from None
    return Settings(index=msg["index"], mac=msg.get_attr("IFLA_ADDRESS") or "",
                    mtu=msg.get_attr("IFLA_MTU") or 0, promisc=bool(msg["flags"] & IFF_PROMISC),
                    allmulti=bool(msg["flags"] & IFF_ALLMULTI), txqlen=msg.get_attr("IFLA_TXQLEN") or 0)


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
