"""The host and container sides of a bridge attachment: bridge, veth pair, addresses, routes."""

import ipaddress

from cni import addressing, sysctl
from cni.errors import CNIError, LINK_CONFLICT
from cni.netlink import Namespace

from plugins.bridge.config import BridgeConfig

IFF_UP, IFF_PROMISC = 0x1, 0x100


def ensure_bridge(host: Namespace, conf: BridgeConfig) -> tuple:
    """The bridge, up; created if missing. Returns (link, created_by_us)."""
    created = host.add_bridge(conf.bridge, conf.mtu)
    link = host.link(conf.bridge)
    if link is None:  # deleted between our create and read: try once more
        created = host.add_bridge(conf.bridge, conf.mtu)
        link = host.link(conf.bridge)
    if link.kind != "bridge":
        raise CNIError(LINK_CONFLICT, f"{conf.bridge} already exists but is not a bridge",
                       f"link {conf.bridge} is of kind {link.kind or 'unknown'}")
    try:
        flags = IFF_UP | (IFF_PROMISC if conf.promisc else 0)
        host.set_link(link.index, flags=flags, change=flags)
        if conf.vlan or conf.vlan_trunk:
            host.set_bridge_vlan_filtering(link.index)
    except CNIError:
        if created:
            host.delete_link(conf.bridge)
        raise
    return host.link(index=link.index), created


def attach_port(host: Namespace, conf: BridgeConfig, bridge_index: int, host_name: str) -> int:
    port = host.link(host_name)
    host.set_link(port.index, master=bridge_index)
    if conf.hairpin or conf.port_isolation:
        host.set_bridge_port(port.index, hairpin=conf.hairpin, isolated=conf.port_isolation)
    if conf.vlan or conf.vlan_trunk:
        if not conf.preserve_default_vlan:
            host.vlan("del", port.index, 1)
        if conf.vlan:
            host.vlan("add", port.index, conf.vlan, pvid_untagged=True)
        for vid in conf.vlan_trunk:
            host.vlan("add", port.index, vid)
    _without_ipv6(host_name)
    host.set_link(port.index, state="up")
    return port.index


def _without_ipv6(port_name: str):
    """A bridge port has no use for IPv6 of its own (the bridge carries the gateway; frames of a port
    go to the bridge before any IP stack sees them). Without it, bringing the port up makes no
    link-local address, routes, DAD or router solicitations on the host: per-pod state that every
    later link change of the node would walk, and work that takes the RTNL lock."""
    try:
        sysctl.ensure(f"net/ipv6/conf/{port_name}/disable_ipv6", "1")
    except FileNotFoundError:
        pass      # a kernel without IPv6


def ensure_gateways(host: Namespace, conf: BridgeConfig, bridge_index: int, ips: list):
    """Each family's gateway address on the bridge; another address in that subnet only with forceAddress."""
    present = host.addresses(bridge_index)
    for ip in ips:
        if not ip.get("gateway"):
            continue
        subnet = ipaddress.ip_interface(ip["address"]).network
        wanted = ipaddress.ip_interface(f"{ip['gateway']}/{subnet.prefixlen}")
        if wanted in present:
            continue
        for other in present:
            if other.version == wanted.version and other.network.overlaps(subnet):
                if not conf.force_address:
                    raise CNIError(LINK_CONFLICT, f"{conf.bridge} already has address {other}",
                                   f"it differs from gateway {wanted}; set forceAddress to replace it")
                host.delete_address(bridge_index, str(other))
        host.add_address(bridge_index, str(wanted), nodad=True)
        present.append(wanted)
    sysctl.enable_forwarding({ipaddress.ip_interface(ip["address"]).version for ip in ips})


def configure_container(container: Namespace, conf: BridgeConfig, ifname: str, ips: list, routes: list):
    """Addresses and routes on the container side, then the link up (unless disabled)."""
    link = container.link(ifname)
    if conf.disable_container_interface:
        return link
    addressing.configure(container, link.index, ips, routes, dad=conf.enable_dad)
    return container.link(index=link.index)
