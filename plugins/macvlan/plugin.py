"""macvlan: the pod gets a link of its own MAC address on a master link of the node (or of the pod,
with `linkInContainer`), as if plugged into the master's network; IPAM optional."""

import contextlib
import secrets

from cni import addressing, invoke, netlink, result as results, skel, sysctl
from cni.errors import CNIError, CHECK_FAILED, LINK_CONFLICT, UNKNOWN_CONTAINER, config_error
from cni.rollback import Rollback

from plugins.macvlan import config


def add(request: skel.Request) -> dict:
    conf = config.load(request)
    with netlink.Namespace(request.netns) as pod, _lower_namespace(conf, request) as lower, Rollback() as undo:
        pod.require_absent(request.ifname)
        master = _master(conf, lower)
        link = _create(conf, lower, pod, master, request)
        undo.push("macvlan link", lambda: pod.delete_link(request.ifname))
        ips, routes, dns = invoke.add_optional_ipam(request, undo)
        if ips:
            _announce_ipv6(request)
        # On a shared segment a duplicate address is a real possibility: IPv6 runs DAD, and we wait for it.
        addressing.configure(pod, link.index, ips, routes, dad=True)
    interface = {"name": request.ifname, "mac": link.mac, "sandbox": request.netns}
    return results.new([interface], ips, routes, conf.dns or dns)


def _announce_ipv6(request: skel.Request):
    """Unsolicited neighbour advertisements when the link's addresses or MAC change, as the reference
    sets up (addressing.configure does the IPv4 side, arp_notify)."""
    with contextlib.suppress(OSError):     # IPv6 may be disabled in the pod
        sysctl.write_in(request.netns, f"net.ipv6.conf.{request.ifname}.ndisc_notify", "1")


def _lower_namespace(conf: config.MacvlanConfig, request: skel.Request) -> netlink.Namespace:
    """Where the master link is: the namespace the plugin runs in, or the pod's."""
    return netlink.Namespace(request.netns if conf.link_in_container else None)


def _where(conf: config.MacvlanConfig) -> str:
    return "in the pod's namespace" if conf.link_in_container else "in the plugin's (host) namespace"


def _master(conf: config.MacvlanConfig, lower: netlink.Namespace) -> netlink.Link:
    if conf.master:
        master = lower.link(conf.master)
        if master is None:
            raise config_error(f"master link {conf.master} not found", _where(conf))
    else:
        index = _default_route_link(lower)
        if index is None:
            raise config_error("no master given and no default route to take it from", _where(conf))
        master = lower.link(index=index)
    if conf.mtu > master.mtu:
        raise config_error(f"invalid MTU {conf.mtu}", f"at most the MTU of master {master.name} ({master.mtu})")
    return master


def _default_route_link(ns: netlink.Namespace) -> int | None:
    """The link of the IPv4 default route, else of the IPv6 one."""
    return ns.default_route_link() or next((oif for dst, _, oif in ns.routes() if dst == "::/0" and oif), None)


def _create(conf: config.MacvlanConfig, lower: netlink.Namespace, pod: netlink.Namespace,
            master: netlink.Link, request: skel.Request) -> netlink.Link:
    """The macvlan, born in the pod under a random name (the pod's name may be taken where it is
    made), then renamed to CNI_IFNAME."""
    target = None if conf.link_in_container else request.netns
    for _ in range(5):
        temp = "mv" + secrets.token_hex(4)
        if lower.add_macvlan(temp, master.index, conf.mode, netns=target, mtu=conf.mtu, mac=conf.mac):
            break
    else:
        raise CNIError(LINK_CONFLICT, "cannot find a free temporary macvlan name")
    link = pod.link(temp)
    try:
        pod.set_link(link.index, ifname=request.ifname)
    except CNIError:
        pod.delete_link(temp)
        raise
    return pod.link(index=link.index)


def delete(request: skel.Request):
    config.load(request)
    invoke.delegate_if_configured(request, "DEL")      # first: a DHCP release leaves through the pod's link
    if not request.netns:
        return
    try:
        with netlink.Namespace(request.netns) as pod:
            link = pod.link(request.ifname)
            if link is not None and link.kind == "macvlan":
                pod.delete_link(request.ifname)
    except CNIError as e:
        if e.code != UNKNOWN_CONTAINER:      # the namespace is gone, and the link with it
            raise


def check(request: skel.Request):
    conf = config.load(request)
    invoke.delegate_if_configured(request, "CHECK")
    want = addressing.expected(request)
    with netlink.Namespace(request.netns) as pod, _lower_namespace(conf, request) as lower:
        try:
            master = _master(conf, lower)
        except CNIError as e:
            raise _check_failed(str(e)) from None
        link = pod.link(request.ifname)
        if link is None:
            raise _check_failed(f"interface {request.ifname} is missing from {request.netns}")
        mode = pod.macvlan_mode(link.index)
        if mode is None:
            raise _check_failed(f"{request.ifname} is a {link.kind or 'non-macvlan'} link, not a macvlan")
        if mode != conf.mode:
            raise _check_failed(f"{request.ifname} is in macvlan mode {mode}, the config says {conf.mode}")
        if link.peer != master.index:
            raise _check_failed(f"{request.ifname} is not on master {master.name}")
        addressing.check_interface(pod, link, want)


def _check_failed(msg: str) -> CNIError:
    return CNIError(CHECK_FAILED, msg)


def status(request: skel.Request):
    config.load(request)
    invoke.delegate_if_configured(request, "STATUS")


def gc(request: skel.Request):
    config.load(request)
    invoke.delegate_if_configured(request, "GC")


PLUGIN = skel.Plugin(name="macvlan", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields=config.FIELDS)
