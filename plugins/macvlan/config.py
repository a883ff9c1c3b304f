"""The macvlan plugin's config: the reference's keys and defaults, checked before anything is touched.

What depends on the kernel (the master link exists, the MTU fits under it) is checked by the plugin
once it has the namespace open.
"""

import dataclasses

from cni import fields
from cni.errors import config_error
from cni.skel import Request

MODES = ("bridge", "private", "vepa", "passthru", "source")
# The plugin's own top-level keys, for cni.netconf.
FIELDS = dict.fromkeys(("master", "mode", "mtu", "mac", "linkInContainer"))


@dataclasses.dataclass(frozen=True)
class MacvlanConfig:
    network: str
    master: str | None          # None: the link of the default route
    mode: str = "bridge"
    mtu: int = 0                # 0: the master's
    mac: str | None = None
    link_in_container: bool = False   # the master lives in the pod's namespace
    dns: dict | None = None


def load(request: Request) -> MacvlanConfig:
    raw = request.config
    master = raw.get("master") or None
    if master is not None:
        master = fields.ifname(raw, "master", "")
    mode = raw.get("mode") or "bridge"
    if mode not in MODES:
        raise config_error(f"unknown macvlan mode {mode!r}", f"expected one of {', '.join(MODES)}")
    fields.ipam_type(raw)      # an invalid ipam section fails here, before anything is made
    dns = raw.get("dns")
    return MacvlanConfig(network=fields.network_name(raw), master=master, mode=mode,
                         mtu=fields.integer(raw, "mtu", 0, 68, 65535, zero_ok=True), mac=_mac(request),
                         link_in_container=fields.boolean(raw, "linkInContainer"),
                         dns=dns if isinstance(dns, dict) and dns else None)


def _mac(request: Request) -> str | None:
    """runtimeConfig.mac, else CNI_ARGS MAC=, else the config's `mac` (the reference's order)."""
    candidates = [request.runtime_config().get("mac"), request.args.get("MAC"), request.config.get("mac")]
    mac = next((m for m in candidates if m), None)
    return None if mac is None else fields.unicast_mac(mac)
