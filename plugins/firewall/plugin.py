"""firewall over nftables, in table `inet podplumb-firewall`.

The `forward` base chain looks packets up in verdict maps: the input interface in `isolated_in`
(bridges of `same-bridge` networks), then destination and source addresses in `daddr4/6`,
`saddr4/6`, whose elements jump to the pod's own chain (see cni.nftables.Attachments):
`ip daddr <pod> ct state established,related accept` and `ip saddr <pod> accept`. A `same-bridge`
network adds, shared by its pods, a chain `iso-<network hash>` (`oifname != <bridge> oifname
@isolated drop`), its bridge in the set `isolated` and the map element `<bridge> : jump iso-...`:
a packet entering from one isolated bridge and leaving by another is dropped."""

import logging
import re

from cni import chained, fields, netlink, nftables, skel
from cni.errors import CHECK_FAILED, CNIError, NOT_AVAILABLE, config_error

LOG = logging.getLogger("podplumb")

POLICIES = ("open", "same-bridge")
FIELDS = dict.fromkeys(("ingressPolicy", "backend", "iptablesAdminChainName", "firewalldZone"))
_SAFE_IFNAME = re.compile(r"[A-Za-z0-9_.\-]{1,15}")

FIREWALL = nftables.Attachments(
    nftables.Table("podplumb-firewall"),
    {"forward": nftables.BaseChain("filter", "forward", 0)},
    (nftables.VerdictMap("isolated_in", "ifname", "forward", "iifname"),
     nftables.VerdictMap("daddr4", "ipv4_addr", "forward", "ip daddr"),
     nftables.VerdictMap("daddr6", "ipv6_addr", "forward", "ip6 daddr"),
     nftables.VerdictMap("saddr4", "ipv4_addr", "forward", "ip saddr"),
     nftables.VerdictMap("saddr6", "ipv6_addr", "forward", "ip6 saddr")),
    prefix="fw")
ISOLATED_SET = "isolated"


def isolation_chain(network: str) -> str:
    return f"iso-{nftables.network_hash(network)}"


def _policy(request: skel.Request) -> str:
    raw = request.config
    for key in ("iptablesAdminChainName", "firewalldZone"):
        if key in raw:
            LOG.warning("firewall: %r is ignored: podplumb's firewall is nftables only", key)
    if raw.get("backend") not in (None, "", "nftables", "iptables", "firewalld"):
        raise config_error(f"firewall: unknown backend {raw['backend']!r}", "podplumb always uses nftables")
    policy = raw.get("ingressPolicy") or "open"
    if policy not in POLICIES:
        raise config_error(f"firewall: invalid ingressPolicy {policy!r}", f"expected one of {', '.join(POLICIES)}")
    return policy


def _rules_and_elements(addresses, note: str):
    rules, elements = [], []
    for address in addresses:
        proto, family = ("ip", "4") if address.version == 4 else ("ip6", "6")
        ip = str(address.ip)
        rules.append((f"{proto} daddr {ip} ct state established,related accept", note))
        rules.append((f"{proto} saddr {ip} accept", note))
        elements += [(f"daddr{family}", ip), (f"saddr{family}", ip)]
    return rules, elements


def _bridge(prev: dict) -> str:
    """The bridge of a `same-bridge` network: prevResult's first interface outside the sandbox."""
    host_side = [i.get("name") for i in prev.get("interfaces") or [] if not i.get("sandbox")]
    name = host_side[0] if host_side else None
    if not isinstance(name, str) or not _SAFE_IFNAME.fullmatch(name) or fields.ifname_problem(name):
        raise config_error("firewall: ingressPolicy same-bridge needs the bridge in prevResult",
                           "its first interface outside the sandbox names the bridge")
    with netlink.Namespace() as host:
        link = host.link(name)
    if link is None or link.kind != "bridge":
        raise config_error(f"firewall: ingressPolicy same-bridge: {name} is not a bridge on this host")
    return name


def _isolate(network: str, bridge: str):
    """The `shared` part of an ADD of a same-bridge network (idempotent nft commands)."""
    chain = isolation_chain(network)

    def add(script: nftables.Script):
        script.add_set(ISOLATED_SET, "ifname")
        script.add_chain(chain)
        script.flush_chain(chain)
        script.add_rule(chain, f'oifname != "{bridge}" oifname @{ISOLATED_SET} drop', f"isolation {bridge}")
        script.add_element(ISOLATED_SET, f'"{bridge}"')
        script.add_element("isolated_in", f'"{bridge}"', chain)
    return add


def add(request: skel.Request) -> dict:
    policy = _policy(request)
    prev = chained.prev_result(request, "firewall")
    addresses = chained.pod_addresses(prev, request.ifname)
    if not addresses:
        return prev
    shared = _isolate(request.network, _bridge(prev)) if policy == "same-bridge" else None
    note = nftables.comment(nftables.tag(request.network, request.container_id, request.ifname),
                            f"{request.container_id}/{request.ifname}")
    rules, elements = _rules_and_elements(addresses, note)
    try:
        FIREWALL.replace(request.network, request.container_id, request.ifname, rules, elements, shared)
    except nftables.NftError as e:
        if e.exists:
            raise CNIError(e.code, "firewall: a pod address is already in use by another attachment",
                           e.details) from None
        raise
    return prev


def delete(request: skel.Request) -> None:
    _policy(request)
    FIREWALL.remove(request.network, request.container_id, request.ifname)


def check(request: skel.Request) -> None:
    policy = _policy(request)
    prev = chained.prev_result(request, "firewall")
    addresses = chained.pod_addresses(prev, request.ifname)
    chain = FIREWALL.chain_name(request.network, request.container_id, request.ifname)
    attached = FIREWALL.read(chain)
    problems = []
    if addresses and attached is None:
        problems.append(f"chain {chain} is missing")
    elif addresses:
        wanted_rules, wanted_elements = _rules_and_elements(addresses, "")
        if len(attached.rules) != len(wanted_rules):
            problems.append(f"chain {chain} holds {len(attached.rules)} rules, expected {len(wanted_rules)}")
        for map_name, key in wanted_elements:
            if FIREWALL.holder(map_name, key) != chain:
                problems.append(f"{key} in map {map_name} does not lead to {chain}")
    if policy == "same-bridge" and addresses:
        bridge = _bridge(prev)
        if FIREWALL.holder("isolated_in", f'"{bridge}"') != isolation_chain(request.network):
            problems.append(f"bridge {bridge} is not isolated")
    if problems:
        raise CNIError(CHECK_FAILED, f"firewall rules of {request.container_id} ({request.ifname}) differ",
                       "; ".join(problems))


def gc(request: skel.Request) -> None:
    """Remove this network's pod chains not in cni.dev/valid-attachments; with none left, the
    network's isolation too."""
    _policy(request)
    FIREWALL.gc(request.network, chained.valid_attachments(request))
    table = FIREWALL.table
    with table.lock():
        listing = table.list()
        chain = isolation_chain(request.network)
        pods = f"fw-{nftables.network_hash(request.network)}-"
        if chain not in listing.chains or any(c.startswith(pods) for c in listing.chains):
            return
        script = table.script()
        for rule in listing.in_chain(chain):
            words = rule.comment.split()
            if len(words) == 2 and words[0] == "isolation" and _SAFE_IFNAME.fullmatch(words[1]):
                script.delete_element("isolated_in", f'"{words[1]}"')
                script.delete_element(ISOLATED_SET, f'"{words[1]}"')
        script.flush_chain(chain)
        script.delete_chain(chain)
        table.apply(script)


def status(request: skel.Request) -> None:
    _policy(request)
    try:
        FIREWALL.table.apply(FIREWALL.add_base(FIREWALL.table.script()), check_only=True)
    except CNIError as e:
        raise CNIError(NOT_AVAILABLE, "firewall cannot use nftables", str(e)) from None


PLUGIN = skel.Plugin(name="firewall", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields=FIELDS)
