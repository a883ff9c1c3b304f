"""nftables mechanism shared by the plugins: our own tables, atomic scripts, rules found by tag.

Every operation is one `nft -f -` transaction; state is read with one `nft -j list table`.
Each rule made for a container carries a comment that starts with a tag
`pp:<8-hex network hash>:<16-hex attachment hash>`, derived from (network, container ID, ifname),
so DEL and GC find a container's rules without stored state. No plugin policy lives here, except
the masquerade helpers at the end, which the main plugins (bridge) share for `ipMasq`.

Standard library only: every plugin call is a new process.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import subprocess

from cni import tools
from cni.errors import CNIError, KERNEL_FAILURE

FAMILY = "inet"
COMMENT_LIMIT = 128          # nft refuses longer comments
EXEC_TIMEOUT = 30

_TAG = re.compile(r"^pp:([0-9a-f]{8}):([0-9a-f]{16})$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/@\-]")


# ---- tags ---------------------------------------------------------------------------------------

def network_hash(network: str) -> str:
    return hashlib.sha256(network.encode()).hexdigest()[:8]


def attachment_hash(network: str, container_id: str, ifname: str) -> str:
    return hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()[:16]


def tag(network: str, container_id: str, ifname: str) -> str:
    return f"pp:{network_hash(network)}:{attachment_hash(network, container_id, ifname)}"


def comment(rule_tag: str, *words: str) -> str:
    """The tag, then words for humans (made safe to quote), cut to nft's comment limit."""
    text = " ".join([rule_tag, *(_UNSAFE.sub("?", w) for w in words if w)])
    return text[:COMMENT_LIMIT]


# ---- rules as listed ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rule:
    chain: str
    handle: int
    comment: str
    expr: tuple

    @property
    def tag(self) -> str | None:
        first = self.comment.split(" ", 1)[0]
        return first if _TAG.match(first) else None

    @property
    def network_hash(self) -> str | None:
        m = _TAG.match(self.comment.split(" ", 1)[0])
        return m.group(1) if m else None

    @property
    def attachment_hash(self) -> str | None:
        m = _TAG.match(self.comment.split(" ", 1)[0])
        return m.group(2) if m else None

    @property
    def words(self) -> list[str]:
        """The comment's words after the tag."""
        return self.comment.split()[1:]

    @property
    def facts(self) -> frozenset:
        return facts_of(self.expr)


def facts_of(expr) -> frozenset:
    """A rule's expressions as comparable facts: (left, op, right) for matches, (statement, args)."""
    out = set()
    for item in expr:
        (kind, body), = item.items()
        if kind == "match":
            out.add((_left(body["left"]), body["op"], _right(body["right"])))
        else:
            out.add(statement(kind, body))
    return frozenset(out)


def match(left: str, op: str, right) -> tuple:
    """The fact a match we write lists as, e.g. match("ip daddr", "!=", "10.1.0.0/24")."""
    return (left, op, _right(right))


def statement(kind: str, body=None) -> tuple:
    if isinstance(body, dict):
        body = tuple(sorted((k, _right(v)) for k, v in body.items()))
    return (kind, body)


def _left(left: dict) -> str:
    (kind, body), = left.items()
    if kind == "payload":
        return f"{body['protocol']} {body['field']}"
    if kind in ("meta", "ct"):
        return f"{kind} {body['key']}"
    return json.dumps(left, sort_keys=True)


def _right(value):
    if isinstance(value, dict) and "prefix" in value:
        value = f"{value['prefix']['addr']}/{value['prefix']['len']}"
    if isinstance(value, dict) and "set" in value:
        return tuple(sorted(str(_right(v)) for v in value["set"]))
    if isinstance(value, str) and ("." in value or ":" in value):
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return value
        return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


# ---- scripts ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BaseChain:
    """A chain attached to a netfilter hook."""
    type: str        # filter, nat
    hook: str        # prerouting, input, output, postrouting, forward
    priority: int


class Script:
    """An nft script for one table, applied as one transaction."""

    def __init__(self, table: str, family: str = FAMILY):
        self.table = table
        self.family = family
        self.lines: list[str] = []

    def __bool__(self):
        return bool(self.lines)

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def add_table(self):
        self.lines.append(f"add table {self.family} {self.table}")

    def delete_table(self):
        self.lines.append(f"delete table {self.family} {self.table}")

    def add_chain(self, name: str, base: BaseChain | None = None):
        spec = (f" {{ type {base.type} hook {base.hook} priority {base.priority}; policy accept; }}"
                if base else "")
        self.lines.append(f"add chain {self.family} {self.table} {name}{spec}")

    def flush_chain(self, name: str):
        self.lines.append(f"flush chain {self.family} {self.table} {name}")

    def add_rule(self, chain: str, rule: str, rule_comment: str | None = None):
        if "\n" in rule or ";" in rule:
            raise ValueError(f"one rule expected, got {rule!r}")
        suffix = f' comment "{rule_comment}"' if rule_comment else ""
        self.lines.append(f"add rule {self.family} {self.table} {chain} {rule}{suffix}")

    def delete_rule(self, rule: Rule):
        self.lines.append(f"delete rule {self.family} {self.table} {rule.chain} handle {rule.handle}")


# ---- one table ----------------------------------------------------------------------------------

class NftError(CNIError):
    """nft refused a script or a listing; `stderr` holds its own words."""

    def __init__(self, msg: str, stderr: str):
        super().__init__(KERNEL_FAILURE, msg, stderr.strip())
        self.stderr = stderr


@dataclasses.dataclass(frozen=True)
class Listing:
    exists: bool
    chains: frozenset
    rules: tuple

    def tagged(self, rule_tag: str, chains=None) -> list[Rule]:
        return [r for r in self.rules if r.tag == rule_tag and (chains is None or r.chain in chains)]

    def of_network(self, net_hash: str, chains=None) -> list[Rule]:
        return [r for r in self.rules if r.network_hash == net_hash and (chains is None or r.chain in chains)]

    def in_chain(self, chain: str) -> list[Rule]:
        return [r for r in self.rules if r.chain == chain]

    def survivors(self, doomed) -> list[Rule]:
        """The tagged rules that remain once `doomed` are deleted."""
        handles = {r.handle for r in doomed}
        return [r for r in self.rules if r.tag and r.handle not in handles]


class Table:
    def __init__(self, name: str, family: str = FAMILY):
        self.name = name
        self.family = family

    def script(self) -> Script:
        return Script(self.name, self.family)

    def list(self) -> Listing:
        """The table's chains and rules (with handles), or an empty listing when it is absent."""
        proc = _nft(["-j", "list", "table", self.family, self.name])
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr:
                return Listing(False, frozenset(), ())
            raise NftError(f"cannot list nftables table {self.family} {self.name}", proc.stderr)
        chains, rules = set(), []
        for item in json.loads(proc.stdout).get("nftables", []):
            if "chain" in item:
                chains.add(item["chain"]["name"])
            elif "rule" in item:
                r = item["rule"]
                rules.append(Rule(r["chain"], r["handle"], r.get("comment", ""), tuple(r.get("expr", ()))))
        return Listing(True, frozenset(chains), tuple(rules))

    def apply(self, script: Script, check_only: bool = False):
        """Run the script as one atomic transaction (or only check it, with `check_only`)."""
        if not script:
            return
        proc = _nft(["-c", "-f", "-"] if check_only else ["-f", "-"], script.text())
        if proc.returncode != 0:
            raise NftError(f"nftables transaction on table {self.family} {self.name} failed", proc.stderr)

    @contextlib.contextmanager
    def lock(self):
        """Serialise read-modify-write of our tables among the plugin processes of this netns.
        The lock is the namespace's own nsfs inode: one per namespace, and no file left behind."""
        fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def replace_tagged(self, rule_tag: str, chain: str, base: BaseChain, rules: "list[tuple[str, str]]"):
        """Make `rules` ((text, comment) pairs) the only rules carrying `rule_tag`, in one transaction."""
        with self.lock():
            listing = self.list()
            script = self.script()
            script.add_table()
            script.add_chain(chain, base)
            for old in listing.tagged(rule_tag):
                script.delete_rule(old)
            for text, rule_comment in rules:
                script.add_rule(chain, text, rule_comment)
            self.apply(script)

    def delete_rules(self, select) -> tuple[Listing, bool]:
        """Delete the rules `select(listing)` picks, in one transaction. The whole table goes when
        no tagged rule would remain (also when there was none left to delete). Returns the listing
        read before, and whether the table was dropped."""
        with self.lock():
            listing = self.list()
            doomed = select(listing)
            if not listing.exists:
                return listing, False
            script = self.script()
            dropping = not listing.survivors(doomed)
            if dropping:
                script.delete_table()
            else:
                for rule in doomed:
                    script.delete_rule(rule)
            self.apply(script)
            return listing, dropping

    def delete_tagged(self, rule_tag: str) -> tuple[Listing, bool]:
        return self.delete_rules(lambda listing: listing.tagged(rule_tag))

    def delete_network_except(self, network: str, valid: set) -> tuple[Listing, bool]:
        """GC: delete `network`'s rules whose (container ID, ifname) is not in `valid`."""
        keep = {attachment_hash(network, cid, ifname) for cid, ifname in valid}
        return self.delete_rules(lambda listing: [r for r in listing.of_network(network_hash(network))
                                                  if r.attachment_hash not in keep])


def _nft_binary() -> str:
    found = tools.find("nft")
    if found is None:
        raise NftError("the nft command is not installed", "nft is on neither PATH nor the sbin directories")
    return found


def _nft(args, stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([_nft_binary(), *args], input=stdin, capture_output=True, text=True,
                              timeout=EXEC_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise NftError("nft did not answer in time", f"{' '.join(args)}: over {EXEC_TIMEOUT}s") from None


# ---- IP masquerade (the main plugins' ipMasq) -----------------------------------------------------

MASQ_TABLE = Table("podplumb-masq")
MASQ_CHAIN = "postrouting"
_MASQ_BASE = BaseChain("nat", "postrouting", 100)
_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}


def _masq_rules(addresses) -> list[tuple[str, frozenset]]:
    """(nft rule text, facts it lists as) for each container address."""
    out = []
    for address in addresses:
        iface = ipaddress.ip_interface(address)
        proto = "ip" if iface.version == 4 else "ip6"
        nfproto = "ipv4" if iface.version == 4 else "ipv6"
        subnet, multicast = str(iface.network), _MULTICAST[iface.version]
        text = (f"meta nfproto {nfproto} {proto} saddr {iface.ip} {proto} daddr != {subnet} "
                f"{proto} daddr != {multicast} masquerade")
        facts = frozenset({match(f"{proto} saddr", "==", str(iface.ip)),
                           match(f"{proto} daddr", "!=", subnet),
                           match(f"{proto} daddr", "!=", multicast),
                           statement("masquerade")})
        out.append((text, facts))
    return out


def ensure_masquerade(network: str, container_id: str, ifname: str, addresses: list[str]) -> None:
    """Masquerade traffic from each address to anything outside its subnet (and not multicast).
    Re-running replaces this container's rules in the same transaction."""
    rule_tag = tag(network, container_id, ifname)
    note = comment(rule_tag, f"{container_id}/{ifname}")
    MASQ_TABLE.replace_tagged(rule_tag, MASQ_CHAIN, _MASQ_BASE, [(text, note) for text, _ in _masq_rules(addresses)])


def remove_masquerade(network: str, container_id: str, ifname: str) -> None:
    MASQ_TABLE.delete_tagged(tag(network, container_id, ifname))


def masquerade_present(network: str, container_id: str, ifname: str, addresses: list[str]) -> bool:
    """True when this container's masquerade rules are exactly those `ensure_masquerade` makes."""
    listing = MASQ_TABLE.list()
    actual = sorted((r.facts for r in listing.tagged(tag(network, container_id, ifname), {MASQ_CHAIN})),
                    key=sorted)
    wanted = sorted((facts for _, facts in _masq_rules(addresses)), key=sorted)
    return actual == wanted


def gc_masquerade(network: str, valid: set[tuple[str, str]]) -> None:
    """Remove this network's masquerade rules whose (container ID, ifname) is not in `valid`."""
    MASQ_TABLE.delete_network_except(network, valid)
