"""ptp's config: the reference's keys, validated with messages that name the key."""

import dataclasses

from cni import fields
from cni.errors import config_error
from cni.skel import Request

# The plugin's own top-level keys, for cni.netconf.
FIELDS = dict.fromkeys(("ipMasq", "mtu"))


@dataclasses.dataclass(frozen=True)
class PtpConfig:
    network: str
    ip_masq: bool = False
    mtu: int = 0
    dns: dict | None = None


def load(request: Request) -> PtpConfig:
    raw = request.config
    ip_masq = raw.get("ipMasq", False)
    if not isinstance(ip_masq, bool):
        raise config_error("'ipMasq' must be true or false", f"got {ip_masq!r}")
    if fields.ipam_type(raw) is None:
        raise config_error("ptp needs ipam", "the pod's addresses and the host's gateway come from IPAM")
    dns = fields.dns(raw)
    return PtpConfig(network=fields.network_name(raw), ip_masq=ip_masq,
                     mtu=fields.integer(raw, "mtu", 0, 68, 65535, zero_ok=True),
                     dns=dns if dns and any(dns.values()) else None)   # an empty one keeps IPAM's
