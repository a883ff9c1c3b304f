"""portmap's nftables rules: what a container's mappings need, and which host ports are taken.

Table `inet podplumb-hostports` (see `cni.nftables.Attachments`):
  prerouting, output   nat hooks: `fib daddr type local` jumps to hostports
                       (output first returns for ::1, which IPv6 cannot NAT to another host)
  hostports            `meta l4proto . th dport vmap @ports`: one element per host port in use,
                       jumping to that port's chain
  hp-<proto>-<port>    the DNAT rules of every attachment holding that host port (one per
                       attachment, address family and host address); listing it is what shows
                       who holds the port, whatever the number of pods
  postrouting          `ip daddr vmap @snat4` / `ip6 daddr vmap @snat6`: a container address jumps to
                       its attachment's chain, holding the masquerade of DNAT'ed traffic from the
                       container's subnet (hairpin, neighbours on the same bridge) and 127.0.0.0/8
  pp-<hashes>          the attachment's chain: masquerade rules, and a record of its elements and
                       of the port chains it holds rules in
  localnet-guard       `iifname vmap @guards`: on an interface where we turned route_localnet on,
                       packets to 127.0.0.0/8 arriving from outside are dropped (chain guard-<hex>)
  ln-<hex ifname>      an empty chain every attachment relying on route_localnet there jumps to:
                       the kernel refuses to delete it while one does, so the last DEL finds out,
                       without a listing, that route_localnet can go back off
Each DNAT rule's comment is `<tag> <proto>/<port>@<host address or :: / 0.0.0.0> <container>/<ifname>`:
the claimed host port is read back from it to detect conflicts.
"""

import dataclasses
import ipaddress

from cni import nftables
from cni.errors import CNIError, PORT_CONFLICT, config_error
from cni.nftables import BaseChain, VerdictMap, match, statement
from plugins.portmap.config import Config

TABLE = nftables.Table("podplumb-hostports")
LEGACY_TABLE = nftables.Table("podplumb-portmap")      # tagged rules in shared chains, before
PREROUTING, OUTPUT, DNAT, SNAT, GUARD = "prerouting", "output", "hostports", "postrouting", "localnet-guard"
ATTACHMENTS = nftables.Attachments(
    TABLE,
    {PREROUTING: BaseChain("nat", "prerouting", -100), OUTPUT: BaseChain("nat", "output", -100), DNAT: None,
     SNAT: BaseChain("nat", "postrouting", 100), GUARD: BaseChain("filter", "prerouting", -300)},
    (VerdictMap("ports", "inet_proto . inet_service", DNAT, "meta l4proto . th dport"),
     VerdictMap("snat4", "ipv4_addr", SNAT, "ip daddr"),
     VerdictMap("snat6", "ipv6_addr", SNAT, "ip6 daddr"),
     VerdictMap("guards", "ifname", GUARD, "iifname")),
    fixed={PREROUTING: (f"fib daddr type local jump {DNAT}",),
           OUTPUT: ("ip6 daddr ::1 return", f"fib daddr type local jump {DNAT}")})
_JUMP = statement("jump", {"target": DNAT})
_PROTO = {4: ("ip", "ipv4"), 6: ("ip6", "ipv6")}
_UNSPECIFIED = {4: "0.0.0.0", 6: "::"}
PORT_CHAIN_PREFIX = "hp-"


def port_chain(protocol: str, port: int) -> str:
    return f"{PORT_CHAIN_PREFIX}{protocol}-{port}"


def port_key(chain: str) -> str:
    """The `ports` map key of a port chain: hp-tcp-8080 -> 'tcp . 8080'."""
    _, protocol, port = chain.split("-")
    return f"{protocol} . {port}"


def localnet_chain(ifname: str) -> str:
    return "ln-" + ifname.encode().hex()


def guard_chain(ifname: str) -> str:
    return "guard-" + ifname.encode().hex()


def localnet_interface(chain: str) -> str | None:
    """The interface an ln-<hex> chain stands for."""
    try:
        return bytes.fromhex(chain[3:]).decode() if chain.startswith("ln-") else None
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class HostPort:
    """A host port a DNAT rule claims: all addresses of a family when host_ip is None."""
    family: int
    protocol: str
    port: int
    host_ip: str | None

    def overlaps(self, other: "HostPort") -> bool:
        return ((self.family, self.protocol, self.port) == (other.family, other.protocol, other.port)
                and (self.host_ip is None or other.host_ip is None or self.host_ip == other.host_ip))

    def word(self) -> str:
        return f"{self.protocol}/{self.port}@{self.host_ip or _UNSPECIFIED[self.family]}"

    @classmethod
    def parse(cls, word: str) -> "HostPort | None":
        try:
            proto_port, address = word.split("@", 1)
            protocol, port = proto_port.split("/", 1)
            ip = ipaddress.ip_address(address)
            return cls(ip.version, protocol, int(port), None if ip.is_unspecified else str(ip))
        except ValueError:
            return None

    def __str__(self):
        where = self.host_ip or f"every IPv{self.family} address"
        return f"{self.protocol}/{self.port} on {where}"


@dataclasses.dataclass(frozen=True)
class Wanted:
    """A rule to add: its chain, its nft text, the facts it lists as, and its comment words."""
    chain: str
    text: str
    facts: frozenset
    words: tuple
    claim: HostPort | None = None


def desired(config: Config, addresses, owner: str) -> list[Wanted]:
    """The rules for the container's mappings. `owner` ('<container>/<ifname>') goes in comments."""
    wanted = []
    for address in addresses:
        wanted += _family_rules(config, address, owner)
    claims = [w.claim for w in wanted if w.claim]
    for i, claim in enumerate(claims):
        for other in claims[i + 1:]:
            if claim.overlaps(other):
                raise config_error("portmap: overlapping port mappings",
                                   f"{claim} and {other} are both asked for this container")
    return wanted


def _family_rules(config: Config, address, owner: str) -> list[Wanted]:
    family, ip = address.version, address.ip
    proto, nfproto = _PROTO[family]
    conditions = " ".join(config.conditions[family])
    wanted, masq_ports = [], []
    for m in config.mappings:
        applies, host_ip = m.host_ip_for(family)
        if not applies:
            continue
        claim = HostPort(family, m.protocol, m.host_port, str(host_ip) if host_ip else None)
        target = f"{ip}:{m.container_port}" if family == 4 else f"[{ip}]:{m.container_port}"
        daddr = f"{proto} daddr {host_ip} " if host_ip else ""
        text = (f"meta nfproto {nfproto} {conditions + ' ' if conditions else ''}{daddr}"
                f"{m.protocol} dport {m.host_port} dnat {proto} to {target}")
        facts = {match(f"{m.protocol} dport", "==", m.host_port),
                 statement("dnat", {"family": proto, "addr": str(ip), "port": m.container_port})}
        if host_ip:
            facts.add(match(f"{proto} daddr", "==", str(host_ip)))
        wanted.append(Wanted(port_chain(m.protocol, m.host_port), text, frozenset(facts), (claim.word(), owner), claim))
        if (m.protocol, m.container_port) not in masq_ports:
            masq_ports.append((m.protocol, m.container_port))
    if config.snat:
        sources = [None] if config.masq_all else [str(address.network)] + (["127.0.0.0/8"] if family == 4 else [])
        for protocol, port in masq_ports:
            for source in sources:
                wanted.append(_masquerade(proto, nfproto, source, str(ip), protocol, port, owner))
    return wanted


def _masquerade(proto, nfproto, source, ip, protocol, port, owner) -> Wanted:
    saddr = f"{proto} saddr {source} " if source else ""
    text = (f"meta nfproto {nfproto} {saddr}{proto} daddr {ip} {protocol} dport {port} "
            "ct status dnat masquerade")
    facts = {match(f"{proto} daddr", "==", ip), match(f"{protocol} dport", "==", port),
             match("ct status", "in", "dnat"), statement("masquerade")}
    if source:
        facts.add(match(f"{proto} saddr", "==", source))
    return Wanted(SNAT, text, frozenset(facts), (owner,))


def base_problems(listed: dict) -> list[str]:
    """What is wrong with the hook chains, from `{chain: rules or None}` of PREROUTING and OUTPUT."""
    problems = []
    for chain in (PREROUTING, OUTPUT):
        rules = listed.get(chain)
        if rules is None:
            problems.append(f"chain {chain} is missing")
        elif not any(_JUMP in r.facts for r in rules):
            problems.append(f"chain {chain} does not jump to {DNAT}")
    return problems


def check_conflicts(wanted: list[Wanted], held: list[nftables.Rule], own_tag: str, network: str):
    """Fail with PORT_CONFLICT, naming the holder, when another attachment's DNAT rule (in `held`,
    the rules of the port chains concerned) claims a wanted port."""
    for rule in held:
        if not rule.tag or rule.tag == own_tag or not rule.words:
            continue
        held_port = HostPort.parse(rule.words[0])
        clash = held_port and next((w.claim for w in wanted if w.claim and w.claim.overlaps(held_port)), None)
        if clash:
            holder = rule.words[1] if len(rule.words) > 1 else "another container"
            where = (f"network {network}" if rule.network_hash == nftables.network_hash(network)
                     else f"another network (hash {rule.network_hash})")
            # Said once: the holder's own range only when it is more than the port asked for.
            raise CNIError(PORT_CONFLICT, f"host port {clash} is already mapped to {holder} in {where}",
                           f"its mapping covers {held_port}" if str(held_port) != str(clash) else "")


def guard_rule() -> str:
    """Dropping packets to 127.0.0.0/8 that arrive (from outside) on the guarded interface."""
    return "ip daddr 127.0.0.0/8 drop"


def missing(wanted: list[Wanted], actual: list[nftables.Rule]) -> tuple[list[Wanted], list[nftables.Rule]]:
    """Pair each wanted rule with an actual one listing at least its facts, in the same chain.
    Returns the wanted rules left unmatched, and the actual rules left over."""
    left = list(actual)
    unmatched = []
    for w in wanted:
        found = next((r for r in left if r.chain == w.chain and w.facts <= r.facts), None)
        if found is None:
            unmatched.append(w)
        else:
            left.remove(found)
    return unmatched, left
