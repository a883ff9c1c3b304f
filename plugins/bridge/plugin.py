"""bridge: a veth pair from the pod's namespace to a Linux bridge on the host."""

import ipaddress

from cni import addressing, chained, invoke, netlink, result as results, skel, veth
from cni.errors import CNIError, INVALID_CONFIG
from cni.rollback import Rollback

from plugins.bridge import config, setup


def _nftables():
    """cni.nftables and the MAC spoof check on top of it, imported only by a call that needs rules
    (ipMasq, macspoofchk, GC): their imports cost a standalone call several milliseconds."""
    from cni import nftables
    from plugins.bridge import macspoof
    return nftables, macspoof


def add(request: skel.Request) -> dict:
    conf = config.load(request)
    with netlink.Namespace(request.netns) as container, netlink.Namespace() as host, Rollback() as undo:
        container.require_absent(request.ifname)
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
        host_name = veth.create(host, request.netns, request.ifname, mtu=conf.mtu, mac=conf.mac)
        undo.push("veth", lambda: host.delete_link(host_name))
        port_index = setup.attach_port(host, conf, bridge.index, host_name)
        if conf.is_gateway:
            setup.ensure_gateways(host, conf, bridge.index, ips)
        pod = setup.configure_container(container, conf, request.ifname, ips, routes)
        if conf.ip_masq or conf.macspoofchk:
            nftables, macspoof = _nftables()
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
    if bridge and not host.ports(bridge.index):
        host.delete_link(name)


def delete(request: skel.Request):
    conf = config.load(request)
    _ipam(conf, request, "DEL")
    host_names = veth.host_side_names(chained.prev_result_or_none(request))
    # The host side is prevResult's second interface outside the sandbox (the first is the bridge).
    host_name = host_names[1] if len(host_names) > 1 else None

    def on_our_bridge(host: netlink.Namespace, link: netlink.Link) -> bool:
        bridge = host.link(conf.bridge)
        return bridge is not None and link.master == bridge.index

    veth.remove(host_name, on_our_bridge, request.netns, request.ifname)
    if conf.ip_masq or conf.macspoofchk:
        nftables, macspoof = _nftables()
    if conf.ip_masq:
        nftables.remove_masquerade(conf.network, request.container_id, request.ifname)
    if conf.macspoofchk:
        macspoof.remove(conf.network, request.container_id, request.ifname)


def check(request: skel.Request):
    conf = config.load(request)
    prev = addressing.prev_result_for_check(request)
    _ipam(conf, request, "CHECK")
    with netlink.Namespace(request.netns) as container, netlink.Namespace() as host:
        pod = veth.check_pod_link(container, prev, request.ifname, request.netns)
        bridge = host.link(conf.bridge)
        if bridge is None or bridge.kind != "bridge":
            raise veth.check_failed(f"bridge {conf.bridge} is missing")
        port = host.link(index=pod.peer)
        if port is None or port.master != bridge.index:
            raise veth.check_failed(f"the host side of {request.ifname} is not attached to {conf.bridge}")
        if not conf.disable_container_interface:
            addressing.check(container, pod.index, request.ifname, chained.pod_ips(prev, request.ifname),
                             prev["routes"])
    if conf.ip_masq or conf.macspoofchk:
        nftables, macspoof = _nftables()
    if conf.ip_masq and not nftables.masquerade_present(conf.network, request.container_id, request.ifname,
                                                        [ip["address"] for ip in prev["ips"]]):
        raise veth.check_failed(f"masquerade rules of {request.container_id} are missing")
    if conf.macspoofchk and not macspoof.present(conf.network, request.container_id, request.ifname):
        raise veth.check_failed(f"MAC spoof check rule of {request.container_id} is missing")


def status(request: skel.Request):
    _ipam(config.load(request), request, "STATUS")


def gc(request: skel.Request):
    conf = config.load(request)
    _ipam(conf, request, "GC")
    valid = chained.valid_attachments(request)
    nftables, macspoof = _nftables()
    nftables.gc_masquerade(conf.network, valid)
    macspoof.gc(conf.network, valid)


PLUGIN = skel.Plugin(name="bridge", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields=config.FIELDS)
