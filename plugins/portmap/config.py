"""portmap's configuration: defaults, then validation; the container's addresses from prevResult."""

import dataclasses
import ipaddress

from cni import limits, log, result as results
from cni.errors import config_error
from cni.skel import Request


PROTOCOLS = ("tcp", "udp", "sctp")
# Keys of the reference plugin that only mean something to its iptables backend.
IPTABLES_ONLY = ("externalSetMarkChain", "markMasqBit")
_FORBIDDEN_IN_CONDITIONS = (";", "\n", "\r", "#")
# The plugin's own top-level keys, for cni.netconf.
FIELDS = dict.fromkeys(("snat", "masqAll", "conditionsV4", "conditionsV6", "backend", *IPTABLES_ONLY))


@dataclasses.dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str
    host_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None   # None: every host address

    def host_ip_for(self, family: int):
        """(applies, address): whether this mapping applies to `family`, and the host address it
        is restricted to there (None: every address). A hostIP of one family leaves the other out."""
        if self.host_ip is None:
            return True, None
        if self.host_ip.version != family:
            return False, None
        return True, None if self.host_ip.is_unspecified else self.host_ip


@dataclasses.dataclass(frozen=True)
class Config:
    snat: bool
    masq_all: bool
    conditions: dict            # family (4, 6) -> list of nft match tokens
    mappings: tuple
    prev_result: dict | None    # in the current (1.1.0) shape


def load(request: Request) -> Config:
    raw = request.config
    _log_ignored(raw)
    prev = raw.get("prevResult")
    return Config(
        snat=_bool(raw, "snat", True),
        masq_all=_bool(raw, "masqAll", False),
        conditions={4: _conditions(raw, "conditionsV4"), 6: _conditions(raw, "conditionsV6")},
        mappings=_mappings(request.runtime_config().get("portMappings")),
        prev_result=results.from_any(prev, request.version) if prev is not None else None,
    )


def container_addresses(prev_result: dict, ifname: str) -> list:
    """The first IPv4 and the first IPv6 address of the container's interface, as interfaces
    (address with prefix). Addresses of other interfaces, or of host-side ones, are skipped."""
    interfaces = prev_result.get("interfaces") or []
    chosen = {}
    for ip in prev_result.get("ips") or []:
        index = ip.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces):
            iface = interfaces[index]
            if iface.get("name") != ifname or not iface.get("sandbox"):
                continue
        address = ipaddress.ip_interface(ip["address"])
        chosen.setdefault(address.version, address)
    return [chosen[v] for v in sorted(chosen)]


def _log_ignored(raw: dict):
    for key in IPTABLES_ONLY:
        if key in raw:
            log.logger().warning("portmap: %r is ignored: it only applies to the iptables backend, "
                        "podplumb always uses nftables", key)
    backend = raw.get("backend")
    if backend not in (None, "", "nftables"):
        log.logger().warning("portmap: backend %r is ignored: podplumb always uses nftables", backend)


def _bool(raw: dict, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise config_error(f"portmap: {key!r} must be a boolean", f"got {value!r}")
    return value


def _conditions(raw: dict, key: str) -> list[str]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise config_error(f"portmap: {key!r} must be a list of strings (nft match tokens)",
                           f"got {value!r}")
    for token in value:
        if any(c in token for c in _FORBIDDEN_IN_CONDITIONS):
            raise config_error(f"portmap: {key!r} may hold only nft match expressions",
                               f"{token!r} contains one of ; # or a line break")
    return list(value)


def _mappings(value) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise config_error("portmap: runtimeConfig.portMappings must be a list", f"got {value!r}")
    limits.check_count(value, limits.MAX_PORT_MAPPINGS, "port mappings")
    mappings = [_mapping(entry) for entry in value]
    return tuple(mappings)


def _mapping(entry) -> PortMapping:
    if not isinstance(entry, dict):
        raise config_error("portmap: each port mapping must be an object", f"got {entry!r}")
    ports = {}
    for key in ("hostPort", "containerPort"):
        port = entry.get(key)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise config_error(f"portmap: invalid {key}", f"{port!r} in {entry!r}: expected 1-65535")
        ports[key] = port
    protocol = entry.get("protocol") or "tcp"
    if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
        raise config_error("portmap: invalid protocol", f"{protocol!r} in {entry!r}: expected tcp, udp or sctp")
    host_ip = entry.get("hostIP") or None
    if host_ip is not None:
        try:
            host_ip = ipaddress.ip_address(host_ip)
        except (ValueError, TypeError):
            raise config_error("portmap: invalid hostIP", f"{host_ip!r} in {entry!r}") from None
    return PortMapping(ports["hostPort"], ports["containerPort"], protocol.lower(), host_ip)
