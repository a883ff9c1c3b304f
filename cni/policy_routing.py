"""Source-based routing in one namespace: routing rules, and routes moved between tables."""

import dataclasses
import errno
import ipaddress

from cni.pyroute2_lite import NetlinkError

from cni import netlink

AF = {4: netlink.AF_INET, 6: netlink.AF_INET6}
FIRST_FREE_TABLE = 100
_RESERVED_TABLES = {0, 253, 254, 255}


@dataclasses.dataclass(frozen=True)
class Rule:
    family: int       # 4 or 6
    src: str | None   # CIDR, None for "from all"
    table: int
    priority: int


@dataclasses.dataclass(frozen=True)
class Route:
    family: int
    dst: str          # CIDR
    table: int
    oif: int
    attrs: tuple      # (name, value) pairs besides dst/table/oif, to re-create the route elsewhere


def rules(ns: netlink.Namespace) -> list[Rule]:
    out = []
    for version, family in AF.items():
        for m in ns.ipr.get_rules(family=family):
            src = m.get_attr("FRA_SRC")
            out.append(Rule(version, f"{src}/{m['src_len']}" if src else None,
                            m.get_attr("FRA_TABLE") or m["table"], m.get_attr("FRA_PRIORITY") or 0))
    return out


def add_rule(ns: netlink.Namespace, src: str, table: int):
    net = ipaddress.ip_network(src, strict=False)
    try:
        ns.ipr.rule("add", family=AF[net.version], src=str(net.network_address), src_len=net.prefixlen,
                    table=table, action="FR_ACT_TO_TBL")
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise netlink.kernel_error(f"cannot add rule from {src} lookup {table}", e) from None


def delete_rule(ns: netlink.Namespace, rule: Rule):
    net = ipaddress.ip_network(rule.src, strict=False)
    try:
        ns.ipr.rule("del", family=AF[rule.family], src=str(net.network_address), src_len=net.prefixlen,
                    table=rule.table, priority=rule.priority)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ESRCH):
            raise netlink.kernel_error(f"cannot delete rule from {rule.src} lookup {rule.table}", e) from None


def routes(ns: netlink.Namespace, table: int | None = None, oif: int | None = None) -> list[Route]:
    """Unicast routes (of `table`, else of every table), optionally only those leaving by `oif`."""
    out = []
    for version, family in AF.items():
        kwargs = {"table": table} if table is not None else {}
        for m in ns.ipr.get_routes(family=family, **kwargs):
            route_oif = m.get_attr("RTA_OIF")
            if m["type"] != 1 or (oif is not None and route_oif != oif):   # 1: RTN_UNICAST
                continue
            dst = m.get_attr("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
            attrs = [("scope", m["scope"]), ("proto", m["proto"])]
            for name, key in (("gateway", "RTA_GATEWAY"), ("prefsrc", "RTA_PREFSRC"), ("priority", "RTA_PRIORITY")):
                if m.get_attr(key) is not None:
                    attrs.append((name, m.get_attr(key)))
            out.append(Route(version, f"{dst}/{m['dst_len']}", m.get_attr("RTA_TABLE") or m["table"],
                             route_oif, tuple(attrs)))
    return out


def used_tables(ns: netlink.Namespace) -> set[int]:
    return {r.table for r in rules(ns)} | {r.table for r in routes(ns)} | _RESERVED_TABLES


def first_free_table(ns: netlink.Namespace, start: int = FIRST_FREE_TABLE) -> int:
    used = used_tables(ns)
    table = start
    while table in used:
        table += 1
    return table


def add_route(ns: netlink.Namespace, route: Route, table: int):
    try:
        ns.ipr.route("add", family=AF[route.family], dst=route.dst, table=table, oif=route.oif,
                     **dict(route.attrs))
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise netlink.kernel_error(f"cannot add route to {route.dst} in table {table}", e) from None


def delete_route(ns: netlink.Namespace, route: Route):
    try:
        ns.ipr.route("del", family=AF[route.family], dst=route.dst, table=route.table, oif=route.oif,
                     **{k: v for k, v in route.attrs if k in ("gateway", "priority", "scope")})
    except NetlinkError as e:
        if e.code not in (errno.ESRCH, errno.ENOENT):
            raise netlink.kernel_error(f"cannot delete route to {route.dst} from table {route.table}", e) from None
