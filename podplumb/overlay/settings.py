"""What the overlay registry of one network on one host needs: the vxlan plugin's config (read
from the same network config file the runtime uses), its `cluster` section, and per-host options.

    "cluster": {"etcdEndpoints": ["http://10.0.0.10:2379"], "cidr": "10.244.0.0/16",
                "subnetLength": 24, "prefix": "/podplumb/vxlan", "ttl": 30,
                "dataDir": "/var/lib/podplumb/vxlan"}
"""

import dataclasses
import ipaddress
import json
import os
import socket

from cni import netconf
from cni.errors import config_error
from plugins.host_local.ranges import parse_cidr
from plugins.vxlan import config as vxlan_config

DEFAULT_PREFIX = "/podplumb/vxlan"
DEFAULT_TTL = 30
DEFAULT_DATA_DIR = "/var/lib/podplumb/vxlan"


@dataclasses.dataclass(frozen=True)
class Settings:
    conf: vxlan_config.VxlanConfig
    endpoints: tuple[str, ...]
    node: str                                    # this host's name in the registry
    prefix: str                                  # where this network's subnet keys live, ends with "/"
    ttl: int
    cidr: ipaddress.IPv4Network | None           # the cluster CIDR subnets are carved from
    subnet_length: int
    subnet: ipaddress.IPv4Network | None         # this host's subnet, when configured rather than claimed
    underlay_ip: str | None
    netns: str | None                            # the network namespace to program (None: our own)
    data_dir: str

    @property
    def remembered_subnet_file(self) -> str:
        """Where the claimed subnet is kept, so that a restarted host claims the same one."""
        return os.path.join(self.data_dir, f"{self.conf.network}.subnet")


def load(network_config: str, *, endpoints=None, node=None, subnet=None, underlay_ip=None, ttl=None,
         netns=None, data_dir=None) -> Settings:
    """Settings from a network config file (a conflist or a single config); keyword arguments,
    when given, override the `cluster` section."""
    raw = _vxlan_section(network_config)
    conf = vxlan_config.parse(raw)
    if not conf.cluster_mode:
        raise config_error(f"network {conf.network} has a static 'subnet'",
                           "the overlay registry serves networks whose hosts claim subnets from etcd")
    cluster = raw.get("cluster") or {}
    if not isinstance(cluster, dict):
        raise config_error("'cluster' must be an object", f"got {cluster!r}")
    endpoints = tuple(endpoints or cluster.get("etcdEndpoints") or ())
    if not endpoints or not all(isinstance(e, str) for e in endpoints):
        raise config_error("no etcd endpoints", "set cluster.etcdEndpoints or pass --etcd-endpoints")
    cidr = parse_cidr(cluster["cidr"], "cluster.cidr") if cluster.get("cidr") else None
    length = cluster.get("subnetLength", 24)
    if isinstance(length, bool) or not isinstance(length, int) or not 8 <= length <= 30:
        raise config_error("cluster.subnetLength must be an integer from 8 to 30", f"got {length!r}")
    if cidr is not None and (cidr.version != 4 or cidr.prefixlen > length):
        raise config_error(f"cluster.cidr {cidr} cannot hold /{length} subnets")
    if subnet is not None:
        subnet = parse_cidr(subnet, "--subnet")
    if subnet is None and cidr is None:
        raise config_error("no way to get a subnet", "set cluster.cidr, or this host's subnet with --subnet")
    ttl = ttl or cluster.get("ttl", DEFAULT_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 2:
        raise config_error("cluster.ttl must be an integer of at least 2 (seconds)", f"got {ttl!r}")
    prefix = cluster.get("prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise config_error("cluster.prefix must be a key prefix starting with '/'", f"got {prefix!r}")
    return Settings(conf=conf, endpoints=endpoints, node=node or socket.gethostname(),
                    prefix=f"{prefix.rstrip('/')}/{conf.network}/subnets/", ttl=ttl, cidr=cidr,
                    subnet_length=length, subnet=subnet, underlay_ip=underlay_ip or conf.underlay_ip,
                    netns=netns, data_dir=data_dir or cluster.get("dataDir") or DEFAULT_DATA_DIR)


def _vxlan_section(path: str) -> dict:
    """The vxlan plugin's config, named after the network (a conflist's plugins carry no name)."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise config_error(f"cannot read network config {path}", str(e)) from None
    if not isinstance(raw, dict):
        raise config_error(f"network config {path} is not a JSON object")
    plugins = raw.get("plugins") if isinstance(raw.get("plugins"), list) else [raw]
    section = next((p for p in plugins if isinstance(p, dict) and p.get("type") == "vxlan"), None)
    if section is None:
        raise config_error(f"network config {path} has no vxlan plugin")
    return netconf.network_config(dict(section, name=raw.get("name")), vxlan_config.FIELDS)
