"""Pods attach to the host's bridge exactly as with the bridge plugin: a vxlan request becomes a
bridge request (the bridge plugin's own code then does veth, addressing, IPAM and rollback)."""

import ipaddress
import json

from cni.skel import Request

from plugins.vxlan.config import OWN_KEYS, VxlanConfig


def bridge_request(request: Request, conf: VxlanConfig, subnet: ipaddress.IPv4Network | None = None,
                   mtu: int = 0) -> Request:
    """The bridge plugin's view of `request`: our keys dropped, the bridge as gateway and default
    route of the pods, the pod MTU, and IPAM ranges defaulting to this host's subnet (`subnet`
    None: DEL and GC, which need no ranges)."""
    raw = {key: value for key, value in request.config.items() if key not in OWN_KEYS}
    raw.update(type="bridge", bridge=conf.bridge)
    raw.setdefault("isGateway", True)
    raw.setdefault("isDefaultGateway", True)
    if mtu:
        raw["mtu"] = mtu
    ipam = dict(raw.get("ipam") or {"type": "host-local"})
    if subnet is not None and "ranges" not in ipam and "subnet" not in ipam:
        ipam["ranges"] = [[{"subnet": str(subnet)}]]
    raw["ipam"] = ipam
    return request.replace(config=raw, stdin=json.dumps(raw).encode())
