"""What a chained (meta) plugin reads from its config: the previous plugin's result, and the
addresses it gave the pod's interface."""

import ipaddress

from cni import result as results
from cni.errors import config_error
from cni.skel import Request


def prev_result(request: Request, plugin: str) -> dict:
    """prevResult in the current (1.1.0) shape; a config error when there is none."""
    prev = request.config.get("prevResult")
    if prev is None:
        raise config_error(f"{plugin} must be chained after a main plugin", "the config has no prevResult")
    return results.from_any(prev, request.version)


def prev_result_or_none(request: Request) -> dict | None:
    """prevResult when it is there and readable (DEL must work without it)."""
    try:
        prev = request.config.get("prevResult")
        return results.from_any(prev, request.version) if prev is not None else None
    except Exception:   # a malformed prevResult on DEL is ignored, as elsewhere
        return None


def interface_index(prev: dict, ifname: str) -> int | None:
    """The index in prev's interfaces of the pod's interface `ifname` (in a sandbox)."""
    for index, iface in enumerate(prev.get("interfaces") or []):
        if iface.get("name") == ifname and iface.get("sandbox"):
            return index
    return None


def pod_ips(prev: dict, ifname: str) -> list[dict]:
    """prev's `ips` entries of the pod's interface `ifname`; entries naming no interface count
    as the pod's (older results and single-interface plugins leave it out)."""
    wanted = interface_index(prev, ifname)
    out = []
    for ip in prev.get("ips") or []:
        index = ip.get("interface")
        if index is None or index == wanted:
            out.append(ip)
    return out


def pod_addresses(prev: dict, ifname: str) -> list:
    """The pod interface's addresses, as ipaddress interfaces (address with prefix)."""
    return [ipaddress.ip_interface(ip["address"]) for ip in pod_ips(prev, ifname)]


def valid_attachments(request: Request) -> set[tuple[str, str]]:
    """GC's `cni.dev/valid-attachments` as (container ID, ifname) pairs."""
    valid = request.config.get("cni.dev/valid-attachments") or []
    if not isinstance(valid, list) or not all(isinstance(a, dict) for a in valid):
        raise config_error("cni.dev/valid-attachments must be a list of objects", f"got {valid!r}")
    return {(str(a.get("containerID", "")), str(a.get("ifname", ""))) for a in valid}
