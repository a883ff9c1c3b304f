"""static IPAM's config: `ipam.addresses` (with gateways), `ipam.routes`, `ipam.dns`; addresses also
from CNI_ARGS `IP=`/`GATEWAY=`, `args.cni.ips` and runtimeConfig `ips`, in the reference's order:
CNI_ARGS adds to the config's list, `args.cni.ips` replaces it, runtimeConfig `ips` replaces that."""

import dataclasses
import ipaddress

from cni import fields, limits
from cni.errors import CNIError, INVALID_ENVIRONMENT, config_error
from plugins.host_local.config import ipam_section, route
from plugins.host_local.ranges import parse_address

@dataclasses.dataclass(frozen=True)
class StaticConfig:
    addresses: tuple     # of {"address": "10.1.0.5/24", "gateway": "10.1.0.1"?}
    routes: tuple
    dns: dict


def load(config: dict, cni_args: dict) -> StaticConfig:
    ipam = ipam_section(config)
    addresses = [_address(entry, f"ipam.addresses[{i}]")
                 for i, entry in enumerate(fields.list_of(ipam, "addresses", "ipam"))]
    addresses += _from_cni_args(cni_args)
    for source, where in ((fields.cni_args(config), "args.cni"), (_runtime_config(config), "runtimeConfig")):
        given = fields.list_of(source, "ips", where)
        if given:   # replaces what came before, as the reference does
            addresses = [_address({"address": text}, f"{where}.ips[{i}]") for i, text in enumerate(given)]
    limits.check_count(addresses, limits.MAX_STATIC_ADDRESSES, "static addresses")
    if not addresses:
        raise config_error("static IPAM has no address",
                           "set ipam.addresses, runtimeConfig ips, args.cni.ips or CNI_ARGS IP=")
    _no_duplicates(addresses)
    routes = fields.list_of(ipam, "routes", "ipam")
    limits.check_count(routes, limits.MAX_ROUTES, "ipam.routes")
    return StaticConfig(addresses=tuple(addresses),
                        routes=tuple(route(r, f"ipam.routes[{i}]") for i, r in enumerate(routes)),
                        dns=fields.dns(ipam) or {})


def _runtime_config(config: dict) -> dict:
    runtime = config.get("runtimeConfig")
    return runtime if isinstance(runtime, dict) else {}


def _interface(text, what: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """ADDRESS/PREFIX; host bits are the point (the pod's own address)."""
    if not isinstance(text, str) or "/" not in text:
        raise config_error(f"{what} {text!r} is not a valid CIDR", "expected ADDRESS/PREFIX, e.g. 10.1.0.5/24")
    try:
        return ipaddress.ip_interface(text.strip())
    except ValueError:
        raise config_error(f"{what} {text!r} is not a valid CIDR", "expected ADDRESS/PREFIX, e.g. 10.1.0.5/24") from None


def _address(entry, where: str) -> dict:
    if not isinstance(entry, dict):
        raise config_error(f"{where} must be an object with an 'address'", f"got {entry!r}")
    address = _interface(entry.get("address"), f"{where}.address")
    out = {"address": str(address)}
    if entry.get("gateway") is not None:
        gateway = parse_address(entry["gateway"], f"{where}.gateway")
        if gateway.version != address.version:
            raise config_error(f"{where}.gateway {gateway} is not of the family of {address}")
        out["gateway"] = str(gateway)
    return out


def _from_cni_args(cni_args: dict) -> list:
    """CNI_ARGS `IP=` (comma-separated CIDRs) added; `GATEWAY=` given to each of them whose subnet holds it
    (as with the reference, the config's own addresses keep their gateways)."""
    try:
        added = [_address({"address": t.strip()}, "CNI_ARGS IP") for t in cni_args.get("IP", "").split(",") if t.strip()]
        gateways = [parse_address(t.strip(), "CNI_ARGS GATEWAY") for t in cni_args.get("GATEWAY", "").split(",")
                    if t.strip()]
    except CNIError as e:
        raise CNIError(INVALID_ENVIRONMENT, e.msg, e.details) from None
    for gateway in gateways:
        for entry in added:
            if gateway in ipaddress.ip_interface(entry["address"]).network:
                entry["gateway"] = str(gateway)
    return added


def _no_duplicates(addresses: list):
    seen = set()
    for entry in addresses:
        ip = ipaddress.ip_interface(entry["address"]).ip
        if ip in seen:
            raise config_error(f"address {ip} is given twice", "each static address may appear once")
        seen.add(ip)
