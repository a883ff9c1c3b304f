"""The bridge plugin's config: reference defaults, then validation with messages that name the key."""

from cni import fields
from cni.errors import config_error
from cni.skel import Request


class BridgeConfig:
    """The validated config: the reference's defaults (class attributes) overridden by what `load`
    found. A plain class, not a dataclass: see cni.skel.Request."""
    bridge: str = "cni0"
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    mtu: int = 0
    hairpin: bool = False
    promisc: bool = False
    vlan: int = 0
    vlan_trunk: tuple = ()          # VLAN IDs tagged on the port
    preserve_default_vlan: bool = True
    enable_dad: bool = False
    macspoofchk: bool = False
    disable_container_interface: bool = False
    port_isolation: bool = False
    mac: str | None = None
    dns: dict | None = None
    layer2_only: bool = False       # no ipam: the pod gets a link and no address

    def __init__(self, network: str, **values):
        self.network = network
        for name, value in values.items():
            if not hasattr(BridgeConfig, name):
                raise TypeError(f"BridgeConfig has no field {name!r}")
            setattr(self, name, value)


_BOOLS = {
    "isGateway": "is_gateway", "isDefaultGateway": "is_default_gateway", "forceAddress": "force_address",
    "ipMasq": "ip_masq", "hairpinMode": "hairpin", "promiscMode": "promisc",
    "preserveDefaultVlan": "preserve_default_vlan", "enabledad": "enable_dad", "macspoofchk": "macspoofchk",
    "disableContainerInterface": "disable_container_interface", "portIsolation": "port_isolation",
}
# The plugin's own top-level keys and their shapes, for cni.netconf.
FIELDS = {**dict.fromkeys(("bridge", "mtu", "vlan", *_BOOLS)), "vlanTrunk": [dict.fromkeys(("id", "minID", "maxID"))]}


def load(request: Request) -> BridgeConfig:
    raw = request.config
    values = {"network": fields.network_name(raw)}
    for key, field in _BOOLS.items():
        if key in raw:
            if not isinstance(raw[key], bool):
                raise config_error(f"'{key}' must be true or false", f"got {raw[key]!r}")
            values[field] = raw[key]
    if values.get("is_default_gateway"):
        values["is_gateway"] = True
    values["bridge"] = fields.ifname(raw, "bridge", "cni0")
    values["mtu"] = fields.integer(raw, "mtu", 0, 68, 65535, zero_ok=True)
    values["vlan"] = fields.integer(raw, "vlan", 0, 0, 4094)
    values["vlan_trunk"] = _trunk(raw.get("vlanTrunk"))
    if values["vlan"] and values["vlan"] in values["vlan_trunk"]:
        raise config_error(f"vlan {values['vlan']} is also in vlanTrunk", "a port's access VLAN cannot be a trunk VLAN")
    values["mac"] = _mac(request)
    values["dns"] = fields.dns(raw)
    values["layer2_only"] = fields.ipam_type(raw) is None
    if values["layer2_only"] and values.get("is_gateway"):
        raise config_error("isGateway needs ipam", "a bridge without IPAM has no gateway address to set")
    if values.get("hairpin") and values.get("promisc"):
        raise config_error("hairpinMode and promiscMode cannot be set together",
                           "a promiscuous bridge already delivers a pod's frames back to it")
    return BridgeConfig(**values)


def _trunk(trunk) -> tuple:
    if trunk is None:
        return ()
    if not isinstance(trunk, list):
        raise config_error("'vlanTrunk' must be a list", f"got {trunk!r}")
    vids = set()
    for entry in trunk:
        if not isinstance(entry, dict):
            raise config_error("each vlanTrunk entry must be an object", f"got {entry!r}")
        if "id" in entry:
            vids.add(fields.integer(entry, "id", 0, 1, 4094))
        elif "minID" in entry or "maxID" in entry:
            low, high = fields.integer(entry, "minID", 0, 1, 4094), fields.integer(entry, "maxID", 0, 1, 4094)
            if low > high:
                raise config_error(f"vlanTrunk minID {low} is greater than maxID {high}")
            vids.update(range(low, high + 1))
        else:
            raise config_error("a vlanTrunk entry needs 'id' or 'minID' and 'maxID'", f"got {entry!r}")
    return tuple(sorted(vids))


def _mac(request: Request) -> str | None:
    """runtimeConfig.mac, else args.cni.mac, else CNI_ARGS MAC=."""
    candidates = [request.runtime_config().get("mac"), fields.cni_args(request.config).get("mac"),
                  request.args.get("MAC")]
    mac = next((m for m in candidates if m), None)
    return None if mac is None else fields.unicast_mac(mac)
