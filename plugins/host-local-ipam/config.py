"""host-local's configuration: where leases live, the range sets, routes and requested addresses."""

import ipaddress
import os

from cni import fields, limits
from cni.errors import CNIError, INVALID_ENVIRONMENT, config_error
from plugins.host_local import ranges

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
_LEGACY_KEYS = ("subnet", "rangeStart", "rangeEnd", "gateway")
_ROUTE_NUMBERS = ("mtu", "advmss", "priority", "table", "scope")


class Location:
    """Where one network's leases live: <dataDir>/<network>/."""
    __slots__ = ("network", "data_dir")

    def __init__(self, network: str, data_dir: str):
        self.network = network
        self.data_dir = data_dir

    @property
    def path(self) -> str:
        return os.path.join(self.data_dir, self.network)


class Config:
    __slots__ = ("location", "range_sets", "routes", "resolv_conf", "requested")

    def __init__(self, location: Location, range_sets: tuple[ranges.RangeSet, ...], routes: tuple[dict, ...],
                 resolv_conf: str | None, requested: tuple[ranges.Address, ...]):
        self.location = location
        self.range_sets = range_sets
        self.routes = routes
        self.resolv_conf = resolv_conf
        self.requested = requested


def ipam_section(config: dict) -> dict:
    ipam = config.get("ipam")
    if not isinstance(ipam, dict):
        raise config_error("IPAM config missing 'ipam' key" if ipam is None else "'ipam' must be an object")
    return ipam


def load_location(config: dict) -> Location:
    """Only what DEL and GC need, so that they work even when the ranges no longer parse."""
    ipam = ipam_section(config)
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise config_error("the network config has no name", "host-local keeps leases per network name")
    if "/" in name or name in (".", ".."):
        raise config_error(f"invalid network name {name!r}", "it becomes a directory name: no '/', '.' or '..'")
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str):
        raise config_error("ipam.dataDir must be a string", f"got {data_dir!r}")
    if not os.path.isabs(data_dir):
        # Relative to what? The runtime's working directory is nobody's choice.
        raise config_error(f"ipam.dataDir {data_dir!r} is not an absolute path", "leases need a fixed place")
    return Location(name, data_dir)


def load(config: dict, cni_args: dict) -> Config:
    location = load_location(config)
    ipam = ipam_section(config)
    resolv_conf = ipam.get("resolvConf") or None
    if resolv_conf is not None and not isinstance(resolv_conf, str):
        raise config_error("ipam.resolvConf must be a string", f"got {resolv_conf!r}")
    routes = fields.list_of(ipam, "routes", "ipam")
    limits.check_count(routes, limits.MAX_ROUTES, "ipam.routes")
    return Config(location=location, range_sets=_range_sets(config, ipam),
                  routes=tuple(route(r, f"ipam.routes[{i}]") for i, r in enumerate(routes)),
                  resolv_conf=resolv_conf, requested=_requested(config, cni_args))


def _range_sets(config: dict, ipam: dict) -> tuple[ranges.RangeSet, ...]:
    """In the reference's order, which fixes the index of `last_reserved_ip.<index>`:
    runtimeConfig.ipRanges, then the single range at the top of `ipam`, then `ipam.ranges`."""
    runtime = config.get("runtimeConfig") if isinstance(config.get("runtimeConfig"), dict) else {}
    specs = [(s, f"runtimeConfig.ipRanges[{i}]")
             for i, s in enumerate(fields.list_of(runtime, "ipRanges", "runtimeConfig"))]
    if "subnet" in ipam:
        specs.append(([{k: ipam[k] for k in _LEGACY_KEYS if k in ipam}], "ipam"))
    else:
        stray = [k for k in _LEGACY_KEYS if ipam.get(k) is not None]
        if stray:
            raise config_error(f"ipam.{stray[0]} is set but ipam.subnet is not",
                               "the single-range form needs a subnet; with 'ranges', set it per range")
    specs += [(s, f"ipam.ranges[{i}]") for i, s in enumerate(fields.list_of(ipam, "ranges", "ipam"))]
    if not specs:
        raise config_error("no IP ranges specified", "set ipam.ranges or ipam.subnet")
    limits.check_count(specs, limits.MAX_RANGE_SETS, "IPAM range sets")
    for spec, where in specs:
        if isinstance(spec, list):
            limits.check_count(spec, limits.MAX_RANGES_PER_SET, f"ranges in {where}")
    sets = tuple(ranges.parse_range_set(spec, i, where) for i, (spec, where) in enumerate(specs))
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            if a.overlaps(b):
                raise config_error(f"{specs[a.index][1]} ({a}) overlaps {specs[b.index][1]} ({b})")
    return sets


def route(spec, where: str) -> dict:
    """One entry of a `routes` list: dst (host bits kept, as the reference does), gw, 1.1.0 numbers."""
    if not isinstance(spec, dict) or "dst" not in spec:
        raise config_error(f"{where} must be an object with a 'dst'", f"got {spec!r}")
    out = {"dst": _route_destination(spec["dst"], where)}
    if spec.get("gw") is not None:
        out["gw"] = str(ranges.parse_address(spec["gw"], f"{where}: gw"))
    for key in _ROUTE_NUMBERS:
        if key in spec:
            if not isinstance(spec[key], int) or isinstance(spec[key], bool):
                raise config_error(f"{where}: {key} must be an integer", f"got {spec[key]!r}")
            out[key] = spec[key]
    return out


def _route_destination(text, where: str) -> str:
    # Host bits are kept, as the reference does: "10.2.3.4/8" stays as written.
    if not isinstance(text, str) or "/" not in text:
        raise config_error(f"{where}: dst {text!r} is not a valid CIDR", "expected ADDRESS/PREFIX")
    try:
        return str(ipaddress.ip_interface(text.strip()))
    except ValueError:
        raise config_error(f"{where}: dst {text!r} is not a valid CIDR") from None


def _requested(config: dict, cni_args: dict) -> tuple[ranges.Address, ...]:
    """Requested addresses, from CNI_ARGS `IP=` (comma-separated), `args.cni.ips` and
    `runtimeConfig.ips`, in that order, without duplicates."""
    found = []
    raw_env = cni_args.get("IP", "")
    for text in filter(None, (t.strip() for t in raw_env.split(","))):
        try:
            found.append(ranges.parse_address(text, "CNI_ARGS IP"))
        except CNIError as e:
            raise CNIError(INVALID_ENVIRONMENT, e.msg, e.details) from None
    found += [ranges.parse_address(t, "args.cni.ips entry")
              for t in fields.list_of(fields.cni_args(config), "ips", "args.cni")]
    runtime = config.get("runtimeConfig")
    if isinstance(runtime, dict):
        found += [ranges.parse_address(t, "runtimeConfig.ips entry")
                  for t in fields.list_of(runtime, "ips", "runtimeConfig")]
    return tuple(dict.fromkeys(found))
