"""portmap's nftables rules: what a container's mappings need, and which host ports are taken.

Table `inet podplumb-portmap`:
  prerouting, output   nat hooks: `fib daddr type local` jumps to hostports
                       (output first returns for ::1, which IPv6 cannot NAT to another host)
  hostports            one DNAT rule per (mapping, container address family)
  postrouting          masquerade of DNAT'ed traffic from the container's subnet (hairpin and
                       neighbours on the same bridge) and from 127.0.0.0/8 (localhost)
  localnet-guard       drops packets to 127.0.0.0/8 arriving on an interface where we turned
                       route_localnet on, so that sysctl exposes nothing beyond our mappings
Each DNAT rule's comment is `<tag> <proto>/<port>@<host address or :: / 0.0.0.0> <container>/<ifname>`:
the claimed host port is read back from it to detect conflicts.
"""

import dataclasses
import ipaddress

from cni import nftables
from cni.errors import CNIError, PORT_CONFLICT, config_error
from cni.nftables import BaseChain, match, statement
from plugins.portmap.config import Config

TABLE = nftables.Table("podplumb-portmap")
PREROUTING, OUTPUT, DNAT, SNAT, GUARD = "prerouting", "output", "hostports", "postrouting", "localnet-guard"
_BASE_CHAINS = {
    PREROUTING: BaseChain("nat", "prerouting", -100),
    OUTPUT: BaseChain("nat", "output", -100),
    SNAT: BaseChain("nat", "postrouting", 100),
    GUARD: BaseChain("filter", "prerouting", -300),
}
_JUMP = statement("jump", {"target": DNAT})
_GUARD_WORD = "route_localnet"
_PROTO = {4: ("ip", "ipv4"), 6: ("ip6", "ipv6")}
_UNSPECIFIED = {4: "0.0.0.0", 6: "::"}


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
        wanted.append(Wanted(DNAT, text, frozenset(facts), (claim.word(), owner), claim))
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


def add_base(script: nftables.Script) -> nftables.Script:
    """Create (idempotently) the table and its chains, and reset the hook chains' fixed rules."""
    script.add_table()
    script.add_chain(DNAT)
    for name, base in _BASE_CHAINS.items():
        script.add_chain(name, base)
    script.flush_chain(PREROUTING)
    script.add_rule(PREROUTING, f"fib daddr type local jump {DNAT}")
    script.flush_chain(OUTPUT)
    script.add_rule(OUTPUT, "ip6 daddr ::1 return")
    script.add_rule(OUTPUT, f"fib daddr type local jump {DNAT}")
    return script


def base_problems(listing: nftables.Listing) -> list[str]:
    if not listing.exists:
        return [f"table {TABLE.family} {TABLE.name} is missing"]
    problems = [f"chain {c} is missing" for c in (DNAT, *_BASE_CHAINS) if c not in listing.chains]
    for chain in (PREROUTING, OUTPUT):
        if not any(_JUMP in r.facts for r in listing.in_chain(chain)):
            problems.append(f"chain {chain} does not jump to {DNAT}")
    return problems


def check_conflicts(wanted: list[Wanted], listing: nftables.Listing, own_tag: str, network: str):
    """Fail with PORT_CONFLICT, naming the holder, when another attachment claims a wanted port."""
    for rule in listing.in_chain(DNAT):
        if not rule.tag or rule.tag == own_tag or not rule.words:
            continue
        held = HostPort.parse(rule.words[0])
        clash = held and next((w.claim for w in wanted if w.claim and w.claim.overlaps(held)), None)
        if clash:
            holder = rule.words[1] if len(rule.words) > 1 else "another container"
            where = (f"network {network}" if rule.network_hash == nftables.network_hash(network)
                     else f"another network (hash {rule.network_hash})")
            # Said once: the holder's own range only when it is more than the port asked for.
            raise CNIError(PORT_CONFLICT, f"host port {clash} is already mapped to {holder} in {where}",
                           f"its mapping covers {held}" if str(held) != str(clash) else "")


def guard_rule(ifname: str) -> tuple[str, str]:
    """(rule, comment) dropping packets to 127.0.0.0/8 that arrive on `ifname`."""
    return f'iifname "{ifname}" ip daddr 127.0.0.0/8 drop', f"{_GUARD_WORD} {ifname}"


def guarded_interfaces(listing: nftables.Listing) -> list[str]:
    """The interfaces whose route_localnet we turned on, as the guard rules record them."""
    return [r.comment.split()[1] for r in listing.in_chain(GUARD)
            if r.comment.startswith(_GUARD_WORD + " ") and len(r.comment.split()) == 2]


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
