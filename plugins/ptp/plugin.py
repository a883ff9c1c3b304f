"""ptp: a veth pair per pod, routed by the host.

The host end holds each family's gateway as a host address (/32, /128) and routes each pod address
to the pod; the pod reaches its subnet and everything else through that gateway, as with the
reference plugin. No bridge: pods of the network talk through the host's routing.
"""

import ipaddress

from cni import addressing, chained, invoke, netlink, result as results, skel, sysctl, veth
from cni.errors import CNIError, INVALID_CONFIG
from cni.rollback import Rollback

from plugins.ptp import config

POD_INDEX = 1   # the result's interfaces: [host end, pod end]


def add(request: skel.Request) -> dict:
    conf = config.load(request)
    with netlink.Namespace(request.netns) as container, netlink.Namespace() as host, Rollback() as undo:
        container.require_absent(request.ifname)
        ipam = invoke.delegate(request, "ADD")
        undo.push("IPAM lease", lambda: invoke.delegate(request, "DEL"))
        ips = _ip_configs(ipam)
        routes = [dict(r) for r in ipam.get("routes") or []]
        sysctl.enable_forwarding({ipaddress.ip_interface(ip["address"]).version for ip in ips})
        host_name = veth.create(host, request.netns, request.ifname, mtu=conf.mtu)
        undo.push("veth", lambda: host.delete_link(host_name))
        host_end = _configure_host(host, host_name, ips)
        pod = _configure_pod(container, request.ifname, ips, routes)
        if conf.ip_masq:
            from cni import nftables     # only a call that makes rules pays for importing it
            undo.push("masquerade", lambda: nftables.remove_masquerade(conf.network, request.container_id,
                                                                       request.ifname))
            nftables.ensure_masquerade(conf.network, request.container_id, request.ifname,
                                       [ip["address"] for ip in ips])
    interfaces = [{"name": host_end.name, "mac": host_end.mac},
                  {"name": request.ifname, "mac": pod.mac, "sandbox": request.netns}]
    return results.new(interfaces, [dict(ip, interface=POD_INDEX) for ip in ips], routes,
                       conf.dns or ipam.get("dns"))


def _ip_configs(ipam: dict) -> list:
    """IPAM's addresses, each with a gateway (by default the first address of its subnet)."""
    if not ipam.get("ips"):
        raise CNIError(INVALID_CONFIG, "IPAM plugin returned no IP address")
    ips = []
    for ip in ipam["ips"]:
        ip = {k: v for k, v in ip.items() if k != "interface"}
        address = ipaddress.ip_interface(ip["address"])
        gateway = ipaddress.ip_address(ip["gateway"]) if ip.get("gateway") else address.network.network_address + 1
        if gateway == address.ip or gateway not in address.network:
            raise CNIError(INVALID_CONFIG, f"no usable gateway for {address}",
                           "ptp routes the pod through a gateway in its subnet: give IPAM one")
        ips.append(dict(ip, gateway=str(gateway)))
    return ips


def _configure_host(host: netlink.Namespace, host_name: str, ips: list) -> netlink.Link:
    """The host end: up, each gateway as a host address, a route to each pod address."""
    link = host.link(host_name)
    host.set_link(link.index, state="up")
    for ip in ips:
        gateway = ipaddress.ip_address(ip["gateway"])
        host.add_address(link.index, addressing.host_prefix(gateway), prefix_route=False)
        pod_address = ipaddress.ip_interface(ip["address"]).ip
        host.add_route(link.index, addressing.host_prefix(pod_address), source=str(gateway), link_scope=True)
    return host.link(index=link.index)


def _configure_pod(container: netlink.Namespace, ifname: str, ips: list, routes: list) -> netlink.Link:
    """The pod end: its addresses without their prefix routes, the gateway on the link, the subnet
    and then IPAM's routes via the gateway."""
    link = container.link(ifname)
    addressing.configure(container, link.index, ips, [], prefix_route=False)
    for ip in ips:
        address = ipaddress.ip_interface(ip["address"])
        container.add_route(link.index, addressing.host_prefix(ip["gateway"]), source=str(address.ip), link_scope=True)
        container.add_route(link.index, str(address.network), ip["gateway"], source=str(address.ip))
    addressing.add_routes(container, link.index, ips, routes)
    return container.link(index=link.index)


def delete(request: skel.Request):
    conf = config.load(request)
    invoke.delegate(request, "DEL")
    host_names = veth.host_side_names(chained.prev_result_or_none(request))
    veth.remove(host_names[0] if host_names else None, lambda host, link: link.master == 0,
                request.netns, request.ifname)
    if conf.ip_masq:
        from cni import nftables
        nftables.remove_masquerade(conf.network, request.container_id, request.ifname)


def check(request: skel.Request):
    conf = config.load(request)
    prev = addressing.prev_result_for_check(request)
    invoke.delegate(request, "CHECK")
    with netlink.Namespace(request.netns) as container, netlink.Namespace() as host:
        pod = veth.check_pod_link(container, prev, request.ifname, request.netns)
        addressing.check(container, pod.index, request.ifname, chained.pod_ips(prev, request.ifname),
                         prev["routes"])
        host_end = host.link(index=pod.peer)
        if host_end is None or host_end.kind != "veth":
            raise veth.check_failed(f"the host end of {request.ifname} is missing")
        held = host.addresses(host_end.index)
        routed = {ipaddress.ip_network(dst) for dst, _, _ in host.routes(host_end.index)}
        for ip in chained.pod_ips(prev, request.ifname):
            if ip.get("gateway") and ipaddress.ip_interface(addressing.host_prefix(ip["gateway"])) not in held:
                raise veth.check_failed(f"gateway {ip['gateway']} is missing from {host_end.name}")
            pod_address = ipaddress.ip_interface(ip["address"]).ip
            if ipaddress.ip_network(addressing.host_prefix(pod_address)) not in routed:
                raise veth.check_failed(f"the host has no route to {pod_address} via {host_end.name}")
    if conf.ip_masq:
        from cni import nftables
        if not nftables.masquerade_present(conf.network, request.container_id, request.ifname,
                                           [ip["address"] for ip in prev["ips"]]):
            raise veth.check_failed(f"masquerade rules of {request.container_id} are missing")


def status(request: skel.Request):
    config.load(request)
    invoke.delegate(request, "STATUS")


def gc(request: skel.Request):
    conf = config.load(request)
    invoke.delegate(request, "GC")
    valid = chained.valid_attachments(request)
    from cni import nftables
    nftables.gc_masquerade(conf.network, valid)


PLUGIN = skel.Plugin(name="ptp", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields=config.FIELDS)
