"""A LAN for the macvlan, host-device and dhcp tests: a namespace standing for the rest of the
network, joined by a veth to the fake host (or pod), whose end there plays the master link."""

import dataclasses

from tests import kernel

LAN4, LAN6 = "10.55.0.1/24", "fd55::1/64"


@dataclasses.dataclass(frozen=True)
class Lan:
    ns: str           # the LAN's namespace (holds LAN4 and LAN6)
    master: str       # the link the plugin sees as master
    master_ns: str    # where that link is
    address4: str = LAN4.split("/")[0]
    address6: str = LAN6.split("/")[0]


def make_lan(netns, master_ns: str, default_route: bool = False) -> Lan:
    """A LAN namespace (from the `netns` fixture, so it is removed) cabled to `master_ns`."""
    lan = netns("pplan")
    master, peer = kernel.unique("ppm"), kernel.unique("ppl")
    kernel.sh("ip", "link", "add", master, "type", "veth", "peer", "name", peer, "netns", lan, ns=master_ns)
    kernel.sh("ip", "link", "set", master, "up", ns=master_ns)
    kernel.sh("ip", "link", "set", peer, "up", ns=lan)
    kernel.sh("ip", "addr", "add", LAN4, "dev", peer, ns=lan)
    kernel.sh("ip", "addr", "add", LAN6, "dev", peer, "nodad", ns=lan)
    if default_route:
        kernel.sh("ip", "addr", "add", "10.55.0.254/24", "dev", master, ns=master_ns)
        kernel.sh("ip", "route", "add", "default", "via", LAN4.split("/")[0], ns=master_ns)
    return Lan(ns=lan, master=master, master_ns=master_ns)
