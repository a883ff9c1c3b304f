"""sbr: the pod interface's routes move into a routing table of their own, and a rule sends traffic
from each of the interface's addresses to that table. Nothing is stored: DEL finds the rules by the
addresses (prevResult's, else the interface's)."""

import ipaddress

from cni import addressing, chained, fields, netlink, policy_routing as pr, skel
from cni.errors import CHECK_FAILED, CNIError, UNKNOWN_CONTAINER, config_error
from cni.rollback import Rollback


def _table(request: skel.Request) -> int | None:
    if request.config.get("table") is None:
        return None
    return fields.integer(request.config, "table", None, 1, 2**32 - 1)


def add(request: skel.Request) -> dict:
    configured = _table(request)
    if configured in (253, 254, 255):
        raise config_error(f"sbr: table {configured} is one of the kernel's own (default, main, local)")
    prev = chained.prev_result(request, "sbr")
    ips = chained.pod_ips(prev, request.ifname)
    if not ips:
        raise config_error(f"sbr: prevResult has no address for interface {request.ifname}")
    with netlink.Namespace(request.netns) as pod, Rollback() as undo:
        link = _link(pod, request)
        table = configured or pr.first_free_table(pod)
        moving = [r for r in pr.routes(pod, table=netlink.RT_TABLE_MAIN, oif=link.index) if not _link_local(r)]
        moving.sort(key=lambda r: dict(r.attrs).get("gateway") is not None)   # connected routes first
        undo.push("routes in the new table", lambda: _flush_table(pod, table, link.index))
        for route in moving:
            pr.add_route(pod, route, table)
        for ip in ips:
            gateway = ip.get("gateway")
            if gateway and not any(r.dst in ("0.0.0.0/0", "::/0") and _family(gateway) == r.family for r in moving):
                default = "0.0.0.0/0" if _family(gateway) == 4 else "::/0"
                pr.add_route(pod, pr.Route(_family(gateway), default, table, link.index, (("gateway", gateway),)),
                             table)
        for ip in ips:
            source = addressing.host_prefix(ip["address"])
            undo.push(f"rule from {source}", lambda s=source: _delete_rules_from(pod, {s}))
            pr.add_rule(pod, source, table)
        undo.push("routes in the main table", lambda: [pr.add_route(pod, r, netlink.RT_TABLE_MAIN)
                                                       for r in moving])
        for route in reversed(moving):        # routes via a gateway before the route to the gateway
            pr.delete_route(pod, route)
    return prev


def delete(request: skel.Request) -> None:
    if not request.netns:
        return
    try:
        with netlink.Namespace(request.netns) as pod:
            prev = chained.prev_result_or_none(request)
            sources = {addressing.host_prefix(str(a)) for a in chained.pod_addresses(prev, request.ifname)} if prev else set()
            link = pod.link(request.ifname)
            if link is not None:
                sources |= {addressing.host_prefix(str(a)) for a in pod.addresses(link.index)}
            tables = _delete_rules_from(pod, sources)
            if link is not None:
                for table in tables - {netlink.RT_TABLE_MAIN}:
                    _flush_table(pod, table, link.index)
    except CNIError as e:
        if e.code != UNKNOWN_CONTAINER:
            raise


def check(request: skel.Request) -> None:
    prev = chained.prev_result(request, "sbr")
    configured = _table(request)
    problems = []
    with netlink.Namespace(request.netns) as pod:
        link = _link(pod, request)
        rules = pr.rules(pod)
        tables = set()
        for address in chained.pod_addresses(prev, request.ifname):
            source = addressing.host_prefix(str(address))
            found = [r for r in rules if r.src == source]
            if not found:
                problems.append(f"no rule from {source}")
            tables |= {r.table for r in found}
        if configured and tables - {configured}:
            problems.append(f"rules point at tables {sorted(tables)}, the config says {configured}")
        for table in tables:
            if not pr.routes(pod, table=table, oif=link.index):
                problems.append(f"table {table} has no route via {request.ifname}")
        left = [r.dst for r in pr.routes(pod, table=netlink.RT_TABLE_MAIN, oif=link.index) if not _link_local(r)]
        if left:
            problems.append(f"routes via {request.ifname} still in the main table: {', '.join(left)}")
    if problems:
        raise CNIError(CHECK_FAILED, f"sbr routing of {request.ifname} differs from what ADD made",
                       "; ".join(problems))


def status(request: skel.Request) -> None:
    _table(request)


def gc(request: skel.Request) -> None:
    """Nothing outlives the pod: the rules live in the pod's namespace."""


def _link(pod: netlink.Namespace, request: skel.Request) -> netlink.Link:
    link = pod.link(request.ifname)
    if link is None:
        raise CNIError(UNKNOWN_CONTAINER, f"sbr: interface {request.ifname} not found in {request.netns}")
    return link


def _delete_rules_from(pod: netlink.Namespace, sources: set) -> set[int]:
    """Delete every rule from one of `sources`; the tables they pointed at."""
    tables = set()
    for rule in pr.rules(pod):
        if rule.src in sources:
            pr.delete_rule(pod, rule)
            tables.add(rule.table)
    return tables


def _flush_table(pod: netlink.Namespace, table: int, oif: int):
    for route in pr.routes(pod, table=table, oif=oif):
        pr.delete_route(pod, route)


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def _link_local(route: pr.Route) -> bool:
    return route.family == 6 and ipaddress.ip_network(route.dst).is_link_local


PLUGIN = skel.Plugin(name="sbr", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields={"table": None})
