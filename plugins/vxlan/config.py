"""The vxlan plugin's config: defaults, then validation with messages that name the key.

Two modes: static (`subnet`, and `peers` listing the other hosts) and cluster (neither: the host's
subnet comes from the lease file the overlay registry writes, and the registry programs the peers).
"""

import dataclasses
import ipaddress
import os

from cni import fields, limits
from cni.errors import config_error
from cni.skel import Request
from plugins.bridge.config import FIELDS as BRIDGE_FIELDS
from plugins.host_local.ranges import parse_address, parse_cidr

DEFAULT_STATE_DIR = "/run/podplumb/vxlan"
DEFAULT_PORT = 4789
MAX_VNI = 2 ** 24 - 1

# Keys this plugin owns; every other key is passed on to the bridge it attaches pods with.
OWN_KEYS = ("vni", "port", "mtu", "underlayIP", "vtep", "subnet", "peers", "stateDir", "cluster")
# Top-level keys and their shapes, for cni.netconf: ours and the bridge's.
FIELDS = {**BRIDGE_FIELDS, **dict.fromkeys(OWN_KEYS),
          "peers": [dict.fromkeys(("underlayIP", "subnet"))],
          "cluster": dict.fromkeys(("etcdEndpoints", "cidr", "subnetLength", "ttl", "prefix", "dataDir"))}


@dataclasses.dataclass(frozen=True)
class StaticPeer:
    underlay_ip: str
    subnet: ipaddress.IPv4Network


@dataclasses.dataclass(frozen=True)
class VxlanConfig:
    network: str
    vni: int
    port: int = DEFAULT_PORT
    mtu: int = 0                                 # 0: the underlay link's MTU minus the VXLAN overhead
    underlay_ip: str | None = None               # None: the address of the default route's link
    vtep: str = ""
    bridge: str = "cni0"
    subnet: ipaddress.IPv4Network | None = None  # None: cluster mode
    peers: tuple[StaticPeer, ...] = ()
    state_dir: str = DEFAULT_STATE_DIR

    @property
    def cluster_mode(self) -> bool:
        return self.subnet is None

    @property
    def lease_file(self) -> str:
        """Where the overlay registry writes this host's subnet lease (cluster mode)."""
        return os.path.join(self.state_dir, f"{self.network}.json")

    @property
    def lock_file(self) -> str:
        return os.path.join(self.state_dir, f"{self.network}.lock")


def load(request: Request) -> VxlanConfig:
    return parse(request.config)


def parse(raw: dict) -> VxlanConfig:
    """The plugin's settings from one network config (also read by the overlay registry)."""
    network = fields.network_name(raw)
    vni = fields.integer(raw, "vni", None, 1, MAX_VNI)
    values = {"network": network, "vni": vni, "port": fields.integer(raw, "port", DEFAULT_PORT, 1, 65535),
              "mtu": fields.integer(raw, "mtu", 0, 68, 65535, zero_ok=True), "vtep": fields.ifname(raw, "vtep", f"ppvx.{vni}"),
              "bridge": fields.ifname(raw, "bridge", "cni0")}
    if raw.get("underlayIP") is not None:
        values["underlay_ip"] = str(_ipv4(raw["underlayIP"], "underlayIP"))
    if raw.get("subnet") is not None:
        values["subnet"] = _ipv4_cidr(raw["subnet"], "subnet")
    elif raw.get("peers") is not None:
        values["subnet"] = _ipam_subnet(raw.get("ipam"))
    values["peers"] = _peers(raw.get("peers"), values.get("subnet"))
    state_dir = raw.get("stateDir", DEFAULT_STATE_DIR)
    if not isinstance(state_dir, str) or not os.path.isabs(state_dir):
        raise config_error("'stateDir' must be an absolute path", f"got {state_dir!r}")
    values["state_dir"] = state_dir
    fields.ipam_type(raw)
    return VxlanConfig(**values)


def _ipv4(text, what: str) -> ipaddress.IPv4Address:
    address = parse_address(text, what)
    if address.version != 4:
        raise config_error(f"{what} {text} is not an IPv4 address", "the overlay runs over and carries IPv4")
    return address


def _ipv4_cidr(text, what: str) -> ipaddress.IPv4Network:
    subnet = parse_cidr(text, what)
    if subnet.version != 4:
        raise config_error(f"{what} {text} is not an IPv4 subnet", "the overlay carries IPv4")
    if subnet.prefixlen > 30:
        raise config_error(f"{what} {text} is too small", "a host subnet needs room for the VTEP, "
                           "the gateway and pods: /30 at most")
    return subnet


def _ipam_subnet(ipam) -> ipaddress.IPv4Network | None:
    """Static mode without `subnet`: this host's subnet is the IPAM's, when the IPAM names exactly one
    IPv4 subnet (`ipam.subnet` or its `ranges`); None otherwise (and `peers` then asks for `subnet`)."""
    if not isinstance(ipam, dict):
        return None
    texts = [ipam.get("subnet")]
    for range_set in ipam.get("ranges") if isinstance(ipam.get("ranges"), list) else []:
        texts += [r.get("subnet") for r in range_set if isinstance(r, dict)] if isinstance(range_set, list) else []
    subnets = set()
    for text in texts:
        if isinstance(text, str):
            try:
                subnets.add(ipaddress.ip_network(text, strict=False))
            except ValueError:
                return None     # host-local names the bad value when it parses the ranges
    ipv4 = [s for s in subnets if s.version == 4]
    return _ipv4_cidr(str(ipv4[0]), "ipam subnet") if len(ipv4) == 1 else None


def _peers(entries, subnet) -> tuple[StaticPeer, ...]:
    """Static peers; an entry for this host's own subnet is skipped, so every host can share one list."""
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise config_error("'peers' must be a list", f"got {entries!r}")
    limits.check_count(entries, limits.MAX_PEERS, "peers")
    if subnet is None:
        raise config_error("'peers' needs 'subnet'", "static peers need this host's own pod subnet: set "
                           "'subnet', or give the IPAM exactly one IPv4 subnet")
    peers, seen = [], [subnet]
    for i, entry in enumerate(entries):
        where = f"peers[{i}]"
        if not isinstance(entry, dict):
            raise config_error(f"{where} must be an object with 'underlayIP' and 'subnet'", f"got {entry!r}")
        peer = StaticPeer(str(_ipv4(entry.get("underlayIP"), f"{where}.underlayIP")),
                          _ipv4_cidr(entry.get("subnet"), f"{where}.subnet"))
        if peer.subnet == subnet:
            continue
        clash = next((s for s in seen if s.overlaps(peer.subnet)), None)
        if clash is not None:
            raise config_error(f"{where}.subnet {peer.subnet} overlaps {clash}", "each host owns its own subnet")
        if any(p.underlay_ip == peer.underlay_ip for p in peers):
            raise config_error(f"{where}.underlayIP {peer.underlay_ip} is listed twice", "one subnet per host")
        seen.append(peer.subnet)
        peers.append(peer)
    return tuple(peers)
