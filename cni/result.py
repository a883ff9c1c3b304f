"""Results: built once in the current version's shape, converted only on output.

A result is a plain dict shaped as CNI 1.1.0: `interfaces`, `ips`, `routes`, `dns`.
"""

import ipaddress

from cni import version as versions
from cni.errors import CNIError, DECODE_FAILURE, INCOMPATIBLE_VERSION

# Fields that 1.1.0 added; older versions must not see them.
_NEW_ROUTE_FIELDS = ("mtu", "advmss", "priority", "table", "scope")
_NEW_INTERFACE_FIELDS = ("mtu", "socketPath", "pciID")


def new(interfaces=None, ips=None, routes=None, dns=None) -> dict:
    result = {"interfaces": list(interfaces or []), "ips": list(ips or []), "routes": list(routes or [])}
    if dns:
        result["dns"] = dns
    return result


def ip_family(address: str) -> int:
    return ipaddress.ip_interface(address).version


def to_version(result: dict, version: str) -> dict:
    """The result as printed for a config of `version`."""
    out = {"cniVersion": version}
    legacy = not versions.at_least(version, "1.0.0")
    modern = versions.at_least(version, "1.1.0")
    if result.get("interfaces"):
        out["interfaces"] = [_drop(i, _NEW_INTERFACE_FIELDS, keep=modern) for i in result["interfaces"]]
    if result.get("ips"):      # the reference's results omit an empty list, in every version
        out["ips"] = []
        for ip in result.get("ips", []):
            ip = dict(ip)
            if legacy:
                ip = {"version": str(ip_family(ip["address"])), **ip}
            out["ips"].append(ip)
    if result.get("routes"):
        out["routes"] = [_drop(r, _NEW_ROUTE_FIELDS, keep=modern) for r in result["routes"]]
    out["dns"] = result.get("dns") or {}
    return out


def from_any(data: dict, version: str) -> dict:
    """Read a result (e.g. prevResult, or an IPAM plugin's output) of any supported version."""
    if not isinstance(data, dict):
        raise CNIError(DECODE_FAILURE, "invalid result", f"expected an object, got {type(data).__name__}")
    version = data.get("cniVersion", version)
    if not versions.at_least(version, "0.3.0"):
        raise CNIError(INCOMPATIBLE_VERSION, f"cannot read a result of version {version}")
    try:
        ips = []
        for ip in data.get("ips") or []:
            ip = {k: v for k, v in ip.items() if k != "version"}
            ipaddress.ip_interface(ip["address"])
            ips.append(ip)
        interfaces = [dict(i) for i in data.get("interfaces") or []]
        routes = [dict(r) for r in data.get("routes") or []]
        for r in routes:
            ipaddress.ip_network(r["dst"], strict=False)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CNIError(DECODE_FAILURE, "invalid result", f"{type(e).__name__}: {e}") from None
    return new(interfaces, ips, routes, data.get("dns") or None)


def _drop(item: dict, fields, keep: bool) -> dict:
    return dict(item) if keep else {k: v for k, v in item.items() if k not in fields}
