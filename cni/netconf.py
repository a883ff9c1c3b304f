"""The field names of what a network config decodes into, so that keys match as the reference reads them.

A schema maps each field name to the schema of its value: None for a scalar (or a map whose keys are
data, such as `capabilities`), a dict for an object, a one-element list `[schema]` for a list of
such values. `canonicalise` renames every key in the config to the field it decodes into (exact
spelling first, then case-insensitively, last key wins: see cni.keys), so a plugin reads `hostPort`
whether containerd sent `HostPort` or a person wrote `hostPort`.

The shared structures are here; each plugin adds its own top-level keys (skel.Plugin.config_fields).
Standard library only: every plugin call is a new process.
"""

from cni.keys import canonical


def _fields(*names: str) -> dict:
    return dict.fromkeys(names)


ROUTE = _fields("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
DNS = _fields("nameservers", "domain", "search", "options")
RANGE = _fields("subnet", "rangeStart", "rangeEnd", "gateway")

IPAM = {
    **_fields("type", "subnet", "rangeStart", "rangeEnd", "gateway", "dataDir", "resolvConf",
              "daemonSocketPath"),
    "ranges": [[RANGE]],
    "routes": [ROUTE],
    "addresses": [_fields("address", "gateway")],     # static
    "dns": DNS,
}

# runtimeConfig, one entry per capability (containerd's CNI library sends its Go field names).
PORT_MAPPING = _fields("hostPort", "containerPort", "protocol", "hostIP")
BANDWIDTH = _fields("ingressRate", "ingressBurst", "egressRate", "egressBurst", "shapedSubnets", "unshapedSubnets")
RUNTIME_DNS = _fields("servers", "searches", "options", "domain")
RUNTIME_CONFIG = {
    **_fields("ips", "mac", "infinibandGUID", "deviceID", "aliases", "cgroupPath"),
    "portMappings": [PORT_MAPPING],
    "bandwidth": BANDWIDTH,
    "dns": RUNTIME_DNS,
    "ipRanges": [[RANGE]],
}

ARGS = {"cni": _fields("ips", "mac")}

RESULT = {
    "cniVersion": None,
    "interfaces": [_fields("name", "mac", "mtu", "sandbox", "socketPath", "pciID")],
    "ips": [_fields("interface", "address", "gateway", "version")],
    "routes": [ROUTE],
    "dns": DNS,
}

NETCONF = {
    **_fields("cniVersion", "cniVersions", "name", "type", "capabilities"),
    "ipam": IPAM,
    "dns": DNS,
    "runtimeConfig": RUNTIME_CONFIG,
    "args": ARGS,
    "prevResult": RESULT,
    "cni.dev/valid-attachments": [_fields("containerID", "ifname")],
}


def canonicalise(value, schema):
    """`value` with the keys of every object the schema describes renamed to their fields."""
    if isinstance(schema, dict) and isinstance(value, dict):
        value = canonical(value, schema)
        return {k: canonicalise(v, schema[k]) if schema.get(k) is not None else v for k, v in value.items()}
    if isinstance(schema, list) and isinstance(value, list):
        return [canonicalise(item, schema[0]) for item in value]
    return value


def network_config(config: dict, plugin_fields: dict | None = None) -> dict:
    """A plugin's network config with its keys canonical: the shared fields plus the plugin's own."""
    return canonicalise(config, {**NETCONF, **plugin_fields} if plugin_fields else NETCONF)
