"""bridge: a veth pair from the pod's namespace to a Linux bridge on the host."""

import ipaddress
import logging

from cni import addressing, invoke, netlink, nftables, result as results, skel
from cni.errors import CNIError, CHECK_FAILED, INVALID_CONFIG, LINK_CONFLICT
from cni.rollback import Rollback

from plugins.bridge import config, macspoof, setup

LOG = logging.getLogger("podplumb")


def add(request: skel.Request) -> dict:
    conf = config.load(request)
    with netlink.Namespace(request.netns) as container, netlink.Namespace() as host, Rollback() as undo:
        if container.link(request.ifname) is not None:
            raise CNIError(LINK_CONFLICT, f"interface {request.ifname} already exists in {request.netns}",
                           "DEL the earlier attachment first")
        # The bridge first (as the reference does): a name taken by another kind of link is refused
        # before IPAM has leased anything.
        bridge, created = setup.ensure_bridge(host, conf)
        if created:
            undo.push("bridge", lambda: _delete_bridge_if_unused(host, conf.bridge))
        ipam = {}
        if not conf.layer2_only:
            ipam = invoke.delegate(request, "ADD")
            undo.push("IPAM lease", lambda: invoke.delegate(request, "DEL"))
        ips = _ip_configs(ipam, conf)
        routes = _routes(ipam, conf, ips)
        host_name = setup.create_veth(host, conf, request.netns, request.ifname)
        undo.push("veth", lambda: host.delete_link(host_name))
        port_index = setup.attach_port(host, conf, bridge.index, host_name)
        if conf.is_gateway:
            setup.ensure_gateways(host, conf, bridge.index, ips)
        pod = setup.configure_container(container, conf, request.ifname, ips, routes)
        if conf.ip_masq:
            undo.push("masquerade", lambda: nftables.remove_masquerade(conf.network, request.container_id,
                                                                       request.ifname))
            nftables.ensure_masquerade(conf.network, request.container_id, request.ifname,
                                       [ip["address"] for ip in ips])
        if conf.macspoofchk:
            undo.push("macspoofchk", lambda: macspoof.remove(conf.network, request.container_id,
                                                             request.ifname))
            macspoof.ensure(conf.network, request.container_id, request.ifname, host_name, pod.mac)
        port = host.link(index=port_index)
        bridge = host.link(index=bridge.index)
    interfaces = [{"name": bridge.name, "mac": bridge.mac},
                  {"name": port.name, "mac": port.mac},
                  {"name": request.ifname, "mac": pod.mac, "sandbox": request.netns}]
    return results.new(interfaces, [dict(ip, interface=2) for ip in ips], routes, conf.dns or ipam.get("dns"))


def _ip_configs(ipam: dict, conf) -> list:
    if conf.layer2_only:
        return []
    if not ipam.get("ips"):
        raise CNIError(INVALID_CONFIG, "IPAM plugin returned no IP address")
    ips = []
    for ip in ipam["ips"]:
        ip = {k: v for k, v in ip.items() if k != "interface"}
        if conf.is_gateway and not ip.get("gateway"):
            # No gateway from IPAM: use the subnet's first address, as the reference does.
            ip["gateway"] = str(ipaddress.ip_interface(ip["address"]).network.network_address + 1)
        ips.append(ip)
    return ips


def _routes(ipam: dict, conf, ips: list) -> list:
    routes = [dict(r) for r in ipam.get("routes") or []]
    if not conf.is_default_gateway:
        return routes
    for ip in ips:
        family = ipaddress.ip_interface(ip["address"]).version
        default = "0.0.0.0/0" if family == 4 else "::/0"
        existing = [r for r in routes if ipaddress.ip_network(r["dst"], strict=False) == ipaddress.ip_network(default)]
        if any(r.get("gw") and r["gw"] != ip["gateway"] for r in existing):
            raise CNIError(INVALID_CONFIG, "isDefaultGateway conflicts with an IPAM default route",
                           f"IPAM routes {default} via {existing[0]['gw']}, the bridge gateway is {ip['gateway']}")
        if not existing:
            routes.append({"dst": default, "gw": ip["gateway"]})
    return routes


def _ipam(conf, request: skel.Request, command: str):
    if not conf.layer2_only:
        invoke.delegate(request, command)


def _delete_bridge_if_unused(host: netlink.Namespace, name: str):
    bridge = host.link(name)
    if bridge and not any(link.master == bridge.index for link in host.links()):
        host.delete_link(name)


def delete(request: skel.Request):
    conf = config.load(request)
    _ipam(conf, request, "DEL")
    # Deleting either end of a veth removes the pair: the host end named by prevResult needs no
    # trip into the pod's namespace, which may be gone already (CNI_NETNS is empty then).
    host_name = _host_interface(_prev_result_if_readable(request))
    with netlink.Namespace() as host:
        veth = host.link(host_name) if host_name else None
        bridge = host.link(conf.bridge) if veth else None
        ours = veth is not None and veth.kind == "veth" and bridge is not None and veth.master == bridge.index
        removed = ours and host.delete_link(host_name)
    if not removed and request.netns:
        try:
            with netlink.Namespace(request.netns) as container:
                container.delete_link(request.ifname)
        except CNIError:
            pass  # the namespace is gone, and the pair with it
    if conf.ip_masq:
        nftables.remove_masquerade(conf.network, request.container_id, request.ifname)
    if conf.macspoofchk:
        macspoof.remove(conf.network, request.container_id, request.ifname)


def _prev_result(request: skel.Request) -> dict | None:
    prev = request.config.get("prevResult")
    return results.from_any(prev, request.version) if prev else None


def _prev_result_if_readable(request: skel.Request) -> dict | None:
    """DEL is best-effort: a malformed prevResult is ignored, and the pod's side found from CNI_NETNS."""
    try:
        return _prev_result(request)
    except CNIError as e:
        LOG.warning("DEL ignores an unreadable prevResult: %s", e)
        return None


def _host_interface(prev: dict | None) -> str | None:
    """The host-side veth named by a prevResult: the interface without sandbox that is not the bridge."""
    if not prev:
        return None
    host_side = [i["name"] for i in prev["interfaces"]
                 if not i.get("sandbox") and isinstance(i.get("name"), str) and i["name"]]
    return host_side[1] if len(host_side) > 1 else None


def check(request: skel.Request):
    conf = config.load(request)
    prev = _prev_result(request)
    if prev is None:
        raise CNIError(CHECK_FAILED, "CHECK needs prevResult", "the runtime must pass the ADD result")
    _ipam(conf, request, "CHECK")
    pod_entry = next((i for i in prev["interfaces"] if i.get("name") == request.ifname and i.get("sandbox")), None)
    if pod_entry is None:
        raise _check_failed(f"prevResult has no interface {request.ifname} in a sandbox")
    with netlink.Namespace(request.netns) as container, netlink.Namespace() as host:
        pod = container.link(request.ifname)
        if pod is None:
            raise _check_failed(f"interface {request.ifname} is missing from {request.netns}")
        if pod.kind != "veth":
            raise _check_failed(f"{request.ifname} is a {pod.kind or 'non-veth'} link, not a veth")
        if pod_entry.get("mac") and pod.mac != pod_entry["mac"].lower():
            raise _check_failed(f"{request.ifname} has MAC {pod.mac}, prevResult says {pod_entry['mac']}")
        bridge = host.link(conf.bridge)
        if bridge is None or bridge.kind != "bridge":
            raise _check_failed(f"bridge {conf.bridge} is missing")
        port = host.link(index=pod.peer)
        if port is None or port.master != bridge.index:
            raise _check_failed(f"the host side of {request.ifname} is not attached to {conf.bridge}")
        if conf.disable_container_interface:
            return
        pod_index = prev["interfaces"].index(pod_entry)
        addressing.check(container, pod.index, request.ifname,
                         [ip for ip in prev["ips"] if ip.get("interface", pod_index) == pod_index], prev["routes"])
    if conf.ip_masq and not nftables.masquerade_present(conf.network, request.container_id, request.ifname,
                                                        [ip["address"] for ip in prev["ips"]]):
        raise _check_failed(f"masquerade rules of {request.container_id} are missing")
    if conf.macspoofchk and not macspoof.present(conf.network, request.container_id, request.ifname):
        raise _check_failed(f"MAC spoof check rule of {request.container_id} is missing")


def _check_failed(msg: str) -> CNIError:
    return CNIError(CHECK_FAILED, msg)


def status(request: skel.Request):
    _ipam(config.load(request), request, "STATUS")


def gc(request: skel.Request):
    conf = config.load(request)
    _ipam(conf, request, "GC")
    valid = {(a.get("containerID"), a.get("ifname"))
             for a in request.config.get("cni.dev/valid-attachments") or [] if isinstance(a, dict)}
    nftables.gc_masquerade(conf.network, valid)
    macspoof.gc(conf.network, valid)


PLUGIN = skel.Plugin(name="bridge", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields=config.FIELDS)
