"""Checks for config fields shared by the plugins; each failure names the key."""

import re

from cni.errors import config_error

# Container IDs, network names and plugin types, as the reference checks them. Always fullmatch:
# `$` would admit a final newline.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
PLAIN_NAME_RULE = "must start with a letter or digit, then letters, digits, '_', '.' or '-'"
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def ifname_problem(name: str) -> str | None:
    """Why `name` cannot be a Linux interface name, or None."""
    if not name or len(name) > 15:
        return "1 to 15 characters"
    if name in (".", ".."):
        return "'.' and '..' are not interface names"
    if any(c in name for c in "/:") or any(c.isspace() for c in name):
        return "no '/', ':' or white space"
    return None


def ifname(raw: dict, key: str, default: str) -> str:
    value = raw.get(key, default)
    problem = ifname_problem(value) if isinstance(value, str) else "must be a string"
    if problem:
        raise config_error(f"invalid {key} name {value!r}", problem)
    return value


def unicast_mac(mac) -> str:
    """`mac` as a lower-case unicast Ethernet address; a config error otherwise."""
    if not isinstance(mac, str) or not _MAC.fullmatch(mac):
        raise config_error(f"invalid MAC address {mac!r}", "expected six hex pairs like 0a:58:0a:01:00:05")
    if int(mac[:2], 16) & 1:
        raise config_error(f"MAC address {mac} is a multicast address")
    return mac.lower()


def boolean(raw: dict, key: str, default: bool = False) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise config_error(f"'{key}' must be true or false", f"got {value!r}")
    return value


def network_name(raw: dict) -> str:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise config_error("missing network name", "the config needs 'name'")
    return name


def ipam_type(raw: dict) -> str | None:
    """The config's ipam.type; None without an ipam section (or with an empty type)."""
    ipam = raw.get("ipam")
    if ipam is not None and not (isinstance(ipam, dict) and isinstance(ipam.get("type"), str)):
        raise config_error("invalid ipam", "'ipam' must be an object with a 'type'")
    return (ipam or {}).get("type") or None


def integer(raw: dict, key: str, default: int | None, low: int, high: int, zero_ok: bool = False) -> int:
    """`raw[key]` as an int in [low, high] (or 0 with `zero_ok`); a default of None makes it required."""
    if default is None and key not in raw:
        raise config_error(f"missing '{key}'", f"expected an integer from {low} to {high}")
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise config_error(f"'{key}' must be an integer", f"got {value!r}")
    if not (low <= value <= high or (zero_ok and value == 0)):
        raise config_error(f"'{key}' {value} is out of range", f"expected {low} to {high}")
    return value


def list_of(section: dict, key: str, where: str) -> list:
    """`section[key]`, which must be a list ([] when absent); `where` names the section in errors."""
    value = section.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise config_error(f"{where}.{key} must be a list", f"got {value!r}")
    return value


def cni_args(raw: dict) -> dict:
    """The config's `args.cni` object ({} when absent)."""
    args = raw.get("args")
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise config_error("'args' must be an object", f"got {args!r}")
    cni = args.get("cni")
    if cni is None:
        return {}
    if not isinstance(cni, dict):
        raise config_error("'args.cni' must be an object", f"got {cni!r}")
    return cni


def dns(raw: dict) -> dict | None:
    """The config's `dns` object (the spec's DNS type: nameservers, domain, search, options), None when absent."""
    value = raw.get("dns")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise config_error("'dns' must be an object", f"got {value!r}")
    for key, value_type in (("nameservers", list), ("domain", str), ("search", list), ("options", list)):
        entry = value.get(key)
        if entry is None:
            continue
        if not isinstance(entry, value_type) or (value_type is list and not all(isinstance(e, str) for e in entry)):
            kind = "a string" if value_type is str else "a list of strings"
            raise config_error(f"'dns.{key}' must be {kind}", f"got {entry!r}")
    return value or None
