"""bandwidth: traffic to the pod is shaped as it leaves the host side of the pod's link (a token
bucket as its root qdisc); traffic from the pod is redirected from that link's ingress to an ifb
device and shaped as it leaves the ifb. The ifb's name is derived from (network, container ID,
ifname): DEL and GC find it without stored state."""

from cni import chained, netlink, nftables, skel, tc
from cni.errors import CHECK_FAILED, CNIError, UNKNOWN_CONTAINER, config_error
from cni.rollback import Rollback
from plugins.bandwidth import config as configs

IFB_PREFIX = "bwp"


def ifb_name(network: str, container_id: str, ifname: str) -> str:
    return (IFB_PREFIX + nftables.network_hash(network)[:4]
            + nftables.attachment_hash(network, container_id, ifname)[:8])


def add(request: skel.Request) -> dict:
    conf = configs.load(request)
    prev = chained.prev_result(request, "bandwidth")
    if not (conf.ingress.shaped or conf.egress.shaped):
        return prev
    ifb = ifb_name(request.network, request.container_id, request.ifname)
    with netlink.Namespace() as host, Rollback() as undo:
        port = _host_link(host, request)
        tc.remove_root(host, port.index)       # a repeated ADD replaces what the first one made
        tc.remove_ingress(host, port.index)
        if conf.ingress.shaped:
            undo.push("ingress shaping", lambda: tc.remove_root(host, port.index))
            _shape(host, port.index, conf.ingress, conf, match="src")
        if conf.egress.shaped:
            undo.push("ifb device", lambda: tc.delete_ifb(host, ifb))
            ifb_index = tc.add_ifb(host, ifb, port.mtu)
            tc.remove_root(host, ifb_index)
            _shape(host, ifb_index, conf.egress, conf, match="dst")
            undo.push("ingress redirect", lambda: tc.remove_ingress(host, port.index))
            tc.redirect_ingress(host, port.index, ifb_index)
            ifb_mac = host.link(index=ifb_index).mac
    if not conf.egress.shaped:
        return prev
    return dict(prev, interfaces=[*prev.get("interfaces", []), {"name": ifb, "mac": ifb_mac}])


def _shape(host, index: int, direction: configs.Direction, conf: configs.Config, match: str):
    if conf.subnets:
        tc.shape_subnets(host, index, direction.rate, direction.burst, conf.subnets, conf.subnets_shaped, match)
    else:
        tc.shape(host, index, direction.rate, direction.burst)


def delete(request: skel.Request) -> None:
    configs.load(request)
    with netlink.Namespace() as host:
        tc.delete_ifb(host, ifb_name(request.network, request.container_id, request.ifname))
        try:
            port = _host_link(host, request)
        except CNIError:
            return      # the pod, or its link, is gone: so are the qdiscs on the link
        tc.remove_root(host, port.index)
        tc.remove_ingress(host, port.index)


def check(request: skel.Request) -> None:
    conf = configs.load(request)
    chained.prev_result(request, "bandwidth")
    ifb = ifb_name(request.network, request.container_id, request.ifname)
    problems = []
    with netlink.Namespace() as host:
        port = _host_link(host, request)
        problems += _shaping_problems(host, port.index, port.name, conf.ingress, conf)
        ifb_link = host.link(ifb)
        has_redirect = any(q.handle == tc.INGRESS_HANDLE for q in tc.qdiscs(host, port.index))
        if conf.egress.shaped:
            if ifb_link is None:
                problems.append(f"ifb device {ifb} is missing")
            else:
                problems += _shaping_problems(host, ifb_link.index, ifb, conf.egress, conf)
            if not has_redirect:
                problems.append(f"no ingress redirect on {port.name}")
        elif ifb_link is not None or has_redirect:
            problems.append(f"egress is shaped ({ifb}) but the config does not ask for it")
    if problems:
        raise CNIError(CHECK_FAILED, f"bandwidth shaping of {request.container_id} differs from its config",
                       "; ".join(problems))


def _shaping_problems(host, index: int, name: str, direction: configs.Direction, conf: configs.Config) -> list:
    root = [q for q in tc.qdiscs(host, index) if q.handle == tc.ROOT_HANDLE]
    if not direction.shaped:
        return [f"{name} is shaped but the config does not ask for it"] if root else []
    want = "htb" if conf.subnets else "tbf"
    if not root or root[0].kind != want:
        return [f"{name} has no {want} root qdisc"]
    rate = root[0].rate if want == "tbf" else tc.htb_class_rates(host, index).get(tc.SHAPED_CLASS, 0)
    if rate != direction.rate // 8:
        return [f"{name} is shaped to {rate * 8} bit/s, the config says {direction.rate}"]
    return []


def gc(request: skel.Request) -> None:
    """Remove this network's ifb devices whose attachment is not in cni.dev/valid-attachments."""
    keep = {ifb_name(request.network, *attachment) for attachment in chained.valid_attachments(request)}
    prefix = IFB_PREFIX + nftables.network_hash(request.network)[:4]
    with netlink.Namespace() as host:
        for link in host.links():
            if link.kind == "ifb" and link.name.startswith(prefix) and link.name not in keep:
                host.delete_link(link.name)


def status(request: skel.Request) -> None:
    configs.load(request)


def _host_link(host: netlink.Namespace, request: skel.Request) -> netlink.Link:
    """The host side of the pod's interface: the peer of the pod's veth."""
    if not request.netns:
        raise CNIError(UNKNOWN_CONTAINER, "no network namespace")
    with netlink.Namespace(request.netns) as pod:
        link = pod.link(request.ifname)
    if link is None:
        raise CNIError(UNKNOWN_CONTAINER, f"interface {request.ifname} not found in {request.netns}")
    port = host.link(index=link.peer) if link.peer and link.kind == "veth" else None
    if port is None or port.kind != "veth":
        raise config_error(f"bandwidth: {request.ifname} has no peer in the host namespace",
                           "bandwidth shapes veth pairs (bridge, ptp)")
    return port


PLUGIN = skel.Plugin(name="bandwidth", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields=configs.FIELDS)
