"""nftables mechanism shared by the plugins: our own tables, atomic scripts, per-attachment chains.

Every change is one transaction. Each rule made for a container carries a comment that starts
with a tag `pp:<8-hex network hash>:<16-hex attachment hash>`, derived from (network, container ID,
ifname). An attachment's rules live in a chain of its own whose name is derived from the same
hashes (see `Attachments`), reached through verdict maps from fixed chains. An ADD reads nothing:
it creates the attachment's chain (`create chain`, idempotent `add` for everything shared) in its
one transaction, and reads that one chain only when the transaction fails because it exists. DEL
and CHECK read only that one chain (and the map elements CHECK verifies), so no call's cost grows
with the number of pods on the node. GC lists the whole table once. No plugin policy lives here,
except the masquerade helpers at the end, which the main plugins (bridge, vxlan through bridge)
share for `ipMasq`.

A transaction goes to the kernel as nf_tables netlink messages podplumb encodes itself (cni.nft_wire)
when it holds only what that module knows: the tables, maps, chains, elements and rule texts the
plugins build. nft would first fetch the names of every chain of the namespace, a cost that grows
with the node. Anything else (a user's portmap conditions, the firewall plugin's sets) goes through
libnftables in this process (ctypes), or an exec'd `nft` when the library cannot be loaded;
PODPLUMB_NFT=library or =exec chooses one of those for everything. Reads nft cannot do without that
fetch (one chain's rules and handles, a chain's use count, a map element) are nf_tables netlink
requests too. The netlink socket and the libnftables context are held open for the process, one
per network namespace (see `_held`): closing them after a transaction would wait for an RCU grace
period, longer than the transaction.

Standard library only: every plugin call is a new process.
"""

import _thread
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import socket
import struct

import cni
from cni import nft_wire, rtnl, tools
from cni.errors import CNIError, KERNEL_FAILURE

FAMILY = "inet"
COMMENT_LIMIT = 128          # nft refuses longer comments
EXEC_TIMEOUT = 30

_TAG = re.compile(r"^pp:([0-9a-f]{8}):([0-9a-f]{16})$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/@\-]")
_VERDICT = re.compile(r": (?:jump|goto) ([A-Za-z0-9_.\-]+)")


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
    """The commands of one transaction on one table: sent as nf_tables netlink messages (cni.nft_wire)
    when it can encode them all, else as an nft script."""

    def __init__(self, table: str, family: str = FAMILY):
        self.table = table
        self.family = family
        self.commands: list[tuple] = []

    def __bool__(self):
        return bool(self.commands)

    def text(self) -> str:
        return "".join(self.line(*command) + "\n" for command in self.commands)

    def line(self, verb: str, *args) -> str:
        where = f"{verb} {self.family} {self.table}"
        if verb in ("add table", "delete table"):
            return where
        if verb in ("add chain", "create chain"):
            name, base = args
            spec = (f" {{ type {base.type} hook {base.hook} priority {base.priority}; policy accept; }}"
                    if base else "")
            return f"{where} {name}{spec}"
        if verb == "add rule":
            chain, rule, rule_comment = args
            return f"{where} {chain} {rule}" + (f' comment "{rule_comment}"' if rule_comment else "")
        if verb == "delete rule":
            return f"{where} {args[0]} handle {args[1]}"
        if verb == "add map":
            return f"{where} {args[0]} {{ type {args[1]} : verdict; }}"
        if verb == "add set":
            return f"{where} {args[0]} {{ type {args[1]}; }}"
        if verb in ("add element", "delete element"):
            name, key, chain = args
            return f"{where} {name} {{ {key}{f' : jump {chain}' if chain else ''} }}"
        return f"{where} {args[0]}"          # flush chain, delete chain

    def messages(self) -> list | None:
        """The transaction as nf_tables messages, None when nft must run it."""
        try:
            return [m for command in self.commands for m in nft_wire.encode(self.family, self.table, command)]
        except nft_wire.Unsupported:
            return None

    def add_table(self):
        self.commands.append(("add table",))

    def delete_table(self):
        self.commands.append(("delete table",))

    def add_map(self, name: str, key_type: str):
        """A verdict map (idempotent)."""
        self.commands.append(("add map", name, key_type))

    def add_set(self, name: str, key_type: str):
        self.commands.append(("add set", name, key_type))

    def add_chain(self, name: str, base: BaseChain | None = None):
        self.commands.append(("add chain", name, base))

    def create_chain(self, name: str):
        """A chain that must not exist yet: the transaction fails ("File exists") when it does."""
        self.commands.append(("create chain", name, None))

    def flush_chain(self, name: str):
        self.commands.append(("flush chain", name))

    def delete_chain(self, name: str):
        self.commands.append(("delete chain", name))

    def add_rule(self, chain: str, rule: str, rule_comment: str | None = None):
        if "\n" in rule or ";" in rule:
            raise ValueError(f"one rule expected, got {rule!r}")
        self.commands.append(("add rule", chain, rule, rule_comment))

    def delete_rule(self, rule: Rule):
        self.commands.append(("delete rule", rule.chain, rule.handle))

    def add_element(self, name: str, key: str, jump: str | None = None):
        """An element of a set, or of a verdict map with `jump` to a chain."""
        self.commands.append(("add element", name, key, jump))

    def delete_element(self, name: str, key: str):
        self.commands.append(("delete element", name, key, None))


class NftError(CNIError):
    """nft refused a script or a listing; `stderr` holds its own words."""

    def __init__(self, msg: str, stderr: str):
        super().__init__(KERNEL_FAILURE, msg, stderr.strip())
        self.stderr = stderr

    @property
    def exists(self) -> bool:
        """An object the transaction creates (a chain, a map key) is there already."""
        return "File exists" in self.stderr

    @property
    def missing(self) -> bool:
        return "No such file or directory" in self.stderr

    @property
    def busy(self) -> bool:
        """A chain the transaction deletes is still referred to."""
        return "Device or resource busy" in self.stderr

    @property
    def stale(self) -> bool:
        """The transaction assumed a state the table is no longer in: read it again and retry."""
        return self.exists or self.missing or self.busy


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


# ---- running nft ------------------------------------------------------------------------------

def _held(what: str, make, close):
    """A netlink handle of this process in the current network namespace, kept open across calls.

    Closing an nf_tables netlink socket after a transaction makes the kernel wait, under the
    namespace's commit lock, until what the transaction replaced is freed (an RCU grace period:
    8-16 ms on a busy node, longer than the transaction itself), and the next transaction in that
    namespace waits for that lock. Held open, the socket pays that at most once, when the process
    exits or moves to another namespace (a daemon's call process serves one caller after another:
    the handle of the previous namespace is closed then)."""
    ns = os.stat("/proc/thread-self/ns/net")
    where = (os.getpid(), ns.st_dev, ns.st_ino)
    found = _HELD.get(what)
    if found and found[0] == where:
        return found[1]
    if found and found[0][0] == where[0]:
        found[2](found[1])            # this process's handle in another namespace
    handle = make()                   # a forked child never closes its parent's
    if not _HELD and cni.EXITS_AFTER_ANSWER:
        cni.BEFORE_EXIT.append(_close_held_in_a_child)
    _HELD[what] = (where, handle, close)
    return handle


def _close_held_in_a_child():
    """A plugin executable's held sockets are closed by a detached child that keeps them alone, so that
    the kernel's wait on close outlives the plugin instead of delaying its exit."""
    cni.run_detached(lambda: 0, keep_sockets=True)


_HELD: dict = {}
_HELD_LOCK = _thread.allocate_lock()     # one command at a time on a held handle, whatever the thread


class _Libnftables:
    """libnftables called in this process (ctypes): no fork and exec of `nft` per command. Its context
    (and netlink socket) is made in the current network namespace and held open (see `_held`)."""

    _JSON = 1 << 4                         # NFT_CTX_OUTPUT_JSON

    def __init__(self, lib):
        self.lib = lib
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_free", "nft_ctx_buffer_output", "nft_ctx_buffer_error",
                     "nft_ctx_output_get_flags"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

    def _new_context(self):
        ctx = self.lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("libnftables could not make a context", "nft_ctx_new returned NULL")
        self.lib.nft_ctx_buffer_output(ctx)
        self.lib.nft_ctx_buffer_error(ctx)
        return ctx

    def run(self, text: str, json_output: bool, check_only: bool) -> tuple[int, str, str]:
        lib = self.lib
        with _HELD_LOCK:
            ctx = _held("libnftables", self._new_context, lib.nft_ctx_free)
            flags = lib.nft_ctx_output_get_flags(ctx)
            lib.nft_ctx_output_set_flags(ctx, flags | self._JSON if json_output else flags & ~self._JSON)
            lib.nft_ctx_set_dry_run(ctx, check_only)
            code = lib.nft_run_cmd_from_buffer(ctx, text.encode())
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        return (0 if code == 0 else 1), out, err


_LIBRARY = "libnftables.so.1"
_backend: "_Libnftables | None | bool" = False      # False: not loaded yet; None: exec `nft`


def _library() -> "_Libnftables | None":
    """libnftables when it can be loaded (and PODPLUMB_NFT is not "exec"), else None: exec `nft`."""
    global _backend
    if _backend is False:
        _backend = None
        if os.environ.get("PODPLUMB_NFT") != "exec":
            try:
                _backend = _Libnftables(ctypes.CDLL(_LIBRARY))
            except (OSError, AttributeError):
                pass
    return _backend


def run(text: str, json_output: bool = False, check_only: bool = False) -> tuple[int, str, str]:
    """Run an nft script as one transaction, or one listing (`json_output`), through libnftables, or
    `nft` when the library is missing -> (exit code, output, error text)."""
    lib = _library()
    if lib is not None:
        return lib.run(text, json_output, check_only)
    import subprocess      # only here: most calls never exec anything
    # `nft -j -f -` would read JSON: a listing (one command, no quoting) goes on the command line.
    args = ["-j", *text.split()] if json_output else (["-c"] if check_only else []) + ["-f", "-"]
    try:
        proc = subprocess.run([_nft_binary(), *args], input=None if json_output else text, capture_output=True,
                              text=True, timeout=EXEC_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise NftError("nft did not answer in time", f"{text.strip()[:200]}: over {EXEC_TIMEOUT}s") from None
    return proc.returncode, proc.stdout, proc.stderr


# ---- nf_tables netlink, for what nft cannot say cheaply ----------------------------------------------
# nft fetches the names of all chains of the namespace before it lists one chain, and prints no use
# count: these requests ask the kernel for one chain alone.

_NETLINK_NETFILTER = 12
_CHAIN_NAME, _CHAIN_USE = 3, 6
_RULE_CHAIN, _RULE_HANDLE, _RULE_USERDATA = 2, 3, 7


def _nf_socket() -> rtnl.Socket:
    """This process's nf_tables socket in the current network namespace, held open (see `_held`);
    used under _HELD_LOCK."""
    def make():
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_NETFILTER)
        sock.settimeout(EXEC_TIMEOUT)
        return rtnl.Socket(sock)
    return _held("nfnetlink", make, rtnl.Socket.close)


def _nf_request(kind: int, family: str, table: str, attrs: bytes = b"", dump: bool = False) -> list[dict] | None:
    """Send one nf_tables request (netlink framing: cni.rtnl); the attributes of each message of the
    answer, None when the kernel answers ENOENT."""
    _, _, payload = nft_wire.message(kind, 0, family, table, attrs)
    with _HELD_LOCK:
        sock = _nf_socket()
        try:
            bodies = sock.dump(kind, payload) if dump else [sock.get(kind, payload)]
        except rtnl.KernelError as e:
            if e.code == errno.ENOENT:
                return None
            raise NftError(f"nf_tables request on table {family} {table} failed", os.strerror(e.code)) from None
    return [rtnl.parse(body[nft_wire.NFGENMSG.size:]) for body in bodies]


def table_exists(family: str, table: str) -> bool:
    return _nf_request(nft_wire.GETTABLE, family, table) is not None


def chain_use(family: str, table: str, chain: str) -> int | None:
    """How many references the kernel counts on a chain (its rules, and the jumps and map elements
    that lead to it), None when the chain does not exist."""
    found = _nf_request(nft_wire.GETCHAIN, family, table, rtnl.string(_CHAIN_NAME, chain))
    if found is None:
        return None
    if not found or _CHAIN_USE not in found[0]:
        raise NftError(f"cannot read nftables chain {family} {table} {chain}", "the kernel sent no use count")
    return struct.unpack(">I", found[0][_CHAIN_USE])[0]


def chain_rules(family: str, table: str, chain: str) -> "list[Rule] | None":
    """The rules of one chain with their handles and comments (not their expressions), None when the
    chain does not exist: a dump the kernel filters to that chain."""
    if chain_use(family, table, chain) is None:
        return None
    found = _nf_request(nft_wire.GETRULE, family, table, rtnl.string(_RULE_CHAIN, chain), dump=True)
    rules = []
    for attrs in found or ():
        handle = struct.unpack(">Q", attrs[_RULE_HANDLE])[0]
        rules.append(Rule(chain, handle, nft_wire.userdata_comment(attrs.get(_RULE_USERDATA, b"")), ()))
    return rules


def _transaction(script: Script, messages: list):
    """Send the script's messages as one nf_tables batch; NftError names the command the kernel
    refused, in nft's words for it ("File exists", "No such file or directory", ...)."""
    batch = [nft_wire.batch_edge(nft_wire.BATCH_BEGIN), *messages, nft_wire.batch_edge(nft_wire.BATCH_END)]
    with _HELD_LOCK:
        refused = _nf_socket().batch(batch)
    if refused:
        index, code = refused
        where = _refused_command(script, index - 1)
        raise NftError(f"nftables transaction on table {script.family} {script.table} failed",
                       f"{os.strerror(code)}: {where}")


def _refused_command(script: Script, index: int) -> str:
    """The script line a message (by its index among the script's messages) came from; the batch's
    own edges (a failed commit is answered on the batch's first message) stand for the whole."""
    for command in script.commands if index >= 0 else ():
        count = len(nft_wire.encode(script.family, script.table, command))
        if index < count:
            return script.line(*command)
        index -= count
    return "the transaction as a whole"


def _nft_binary() -> str:
    found = tools.find("nft")
    if found is None:
        raise NftError("the nft command is not installed", "nft is on neither PATH nor the sbin directories")
    return found


def _rules(listed: str) -> list:
    return [Rule(r["chain"], r["handle"], r.get("comment", ""), tuple(r.get("expr", ())))
            for item in json.loads(listed or "{}").get("nftables", []) if (r := item.get("rule"))]


# ---- one table ----------------------------------------------------------------------------------

class Table:
    def __init__(self, name: str, family: str = FAMILY):
        self.name = name
        self.family = family

    def script(self) -> Script:
        return Script(self.name, self.family)

    def list(self) -> Listing:
        """The table's chains and rules (with handles), or an empty listing when it is absent."""
        code, out, err = run(f"list table {self.family} {self.name}", json_output=True)
        if code != 0:
            if "No such file or directory" in err:
                return Listing(False, frozenset(), ())
            raise NftError(f"cannot list nftables table {self.family} {self.name}", err)
        chains = {item["chain"]["name"] for item in json.loads(out).get("nftables", []) if "chain" in item}
        return Listing(True, frozenset(chains), tuple(_rules(out)))

    def chain_rules(self, chain: str) -> "list[Rule] | None":
        """The rules of one chain, handles and comments only, None when the chain or table is absent
        (asked of the kernel for that chain alone)."""
        return chain_rules(self.family, self.name, chain)

    def list_chain(self, chain: str) -> "list[Rule] | None":
        """The rules of one chain with their expressions (one `nft list chain`, which fetches the names
        of every chain first), None when the chain or table is absent."""
        code, out, err = run(f"list chain {self.family} {self.name} {chain}", json_output=True)
        if code != 0:
            if "No such file or directory" in err:
                return None
            raise NftError(f"cannot list nftables chain {self.family} {self.name} {chain}", err)
        return _rules(out)

    def apply(self, script: Script, check_only: bool = False):
        """Run the script as one atomic transaction (or only check it, with `check_only`): as
        nf_tables messages when they say it all and nft is not asked for, else through nft."""
        if not script:
            return
        messages = None if check_only or os.environ.get("PODPLUMB_NFT") else script.messages()
        if messages is not None:
            _transaction(script, messages)
            return
        code, _, err = run(script.text(), check_only=check_only)
        if code != 0:
            raise NftError(f"nftables transaction on table {self.family} {self.name} failed", err)

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


# ---- per-attachment chains behind verdict maps ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VerdictMap:
    """A verdict map and the lookup rule, in a fixed chain, that sends packets through it."""
    name: str
    key_type: str      # nft key type: "ipv4_addr", "ifname", "inet_proto . inet_service", ...
    chain: str         # the fixed chain holding the lookup
    selector: str      # what is looked up: "ip saddr", "iifname", ...

    def lookup_rule(self) -> str:
        return f"{self.selector} vmap @{self.name}"


@dataclasses.dataclass(frozen=True)
class Attached:
    """An attachment's chain as listed: its rules, and the map elements that jump to it."""
    chain: str
    rules: tuple                       # Rule, the record rules excluded
    elements: tuple                    # (map name, key text)
    notes: tuple = ()                  # words the plugin recorded with them


_RECORD_WORD = "@"    # first comment word of a record rule; then "<map>/<key part>/..." and ":<note>"


class Attachments:
    """Per-attachment chains in one of our tables, reached through verdict maps.

    Layout: fixed chains (base chains on hooks, and plain chains) holding fixed rules, among them
    one lookup rule per `VerdictMap` (`ip saddr vmap @masq4`); for each attachment a chain named
    `<prefix>-<network hash>-<attachment hash>` holding its rules, and elements in the maps whose
    verdict jumps to that chain (`10.1.0.5 : jump pp-1a2b3c4d-...`). The chain's last rules are
    `return`s whose comments record those elements and the plugin's notes (`<tag> @ saddr4/10.1.0.5
    :hp-tcp-80`), so DEL reads the attachment's one chain and knows what to delete, without stored
    state and without listing the table. Each operation is one transaction: `add_base` (idempotent), the attachment's old chain
    and elements deleted, the new ones added. A map key already held by another attachment makes
    the transaction fail (nft: "File exists"); the caller decides (`holder` names the owner).

    GC lists the table once and removes the chains (and their elements) of attachments that are
    not valid; a GC that leaves no attachment chain drops the table. DEL never drops the table:
    knowing that no other attachment is left would cost a listing.

    A plugin that needs rules per attachment (bridge ipMasq and macspoofchk, portmap, firewall)
    describes its fixed chains, fixed rules and maps here and passes rule texts and map keys.
    """

    def __init__(self, table: "Table", chains: dict, maps: tuple = (), fixed: dict | None = None,
                 prefix: str = "pp"):
        self.table = table
        self.chains = chains              # name -> BaseChain, or None for a plain chain
        self.maps = {m.name: m for m in maps}
        self.fixed = fixed or {}          # chain name -> fixed rules before the map lookups
        self.prefix = prefix

    def chain_name(self, network: str, container_id: str, ifname: str) -> str:
        return f"{self.prefix}-{network_hash(network)}-{attachment_hash(network, container_id, ifname)}"

    def _parse_chain_name(self, name: str) -> tuple[str, str] | None:
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == self.prefix and len(parts[1]) == 8 and len(parts[2]) == 16:
            return parts[1], parts[2]
        return None

    def add_base(self, script: Script) -> Script:
        """The table, fixed chains and maps (idempotent); the fixed chains' rules rewritten."""
        script.add_table()
        for m in self.maps.values():
            script.add_map(m.name, m.key_type)
        for name, base in self.chains.items():
            script.add_chain(name, base)
        for name in self.chains:
            rules = list(self.fixed.get(name, ())) + [m.lookup_rule() for m in self.maps.values() if m.chain == name]
            if rules:
                script.flush_chain(name)
                for rule in rules:
                    script.add_rule(name, rule)
        return script

    def read(self, chain: str, expressions: bool = False) -> Attached | None:
        """The attachment's chain, None when it does not exist. Its rules' expressions (for CHECK)
        only with `expressions`: that takes `nft list chain`."""
        found = self.table.list_chain(chain) if expressions else self.table.chain_rules(chain)
        return None if found is None else attachments_read(chain, found)

    def add(self, script: Script, chain: str, rule_tag: str, rules, elements=(), notes=(), fresh=False):
        """Add the attachment's chain with `rules` ((text, comment) pairs), map `elements` ((map
        name, key text) pairs) jumping to it, and `notes` (words) recorded for a later read. `fresh`:
        the chain must be new (`create chain`), the transaction fails when it exists."""
        if fresh:
            script.create_chain(chain)
        else:
            script.add_chain(chain)
        for text, rule_comment in rules:
            script.add_rule(chain, text, rule_comment)
        words = ["/".join([m, *key.split(" . ")]) for m, key in elements] + [":" + note for note in notes]
        for record in _records(rule_tag, words):
            script.add_rule(chain, "return", record)
        for map_name, key in elements:
            script.add_element(map_name, key, chain)

    def delete(self, script: Script, attached: Attached) -> Script:
        """Remove the attachment's elements and chain (as read) in `script`."""
        for map_name, key in attached.elements:
            script.delete_element(map_name, key)
        script.flush_chain(attached.chain)
        script.delete_chain(attached.chain)
        return script

    def replace(self, network: str, container_id: str, ifname: str, rules, elements=(), shared=None):
        """Make the attachment's chain hold exactly `rules` and `elements`: one transaction.
        `shared(script)`, when given, adds to the same transaction objects several attachments
        share (with idempotent `add` commands).

        The usual ADD finds no chain of the attachment: it is made with `create chain`, without
        reading anything first. When that transaction fails (the chain exists: a repeated ADD; or
        a key is held by another attachment), the chain is read and replaced."""
        chain = self.chain_name(network, container_id, ifname)
        rule_tag = tag(network, container_id, ifname)

        def script(old, fresh=False):
            script = self.add_base(self.table.script())
            if old:
                self.delete(script, old)
            if shared:
                shared(script)
            self.add(script, chain, rule_tag, rules, elements, fresh=fresh)
            return script
        with self.table.lock():
            try:
                self.table.apply(script(None, fresh=True))
                return
            except NftError as e:
                if not e.stale:
                    raise
            self._apply_tolerating_lost_elements(script, self.read(chain))

    def remove(self, network: str, container_id: str, ifname: str) -> Attached | None:
        """Delete the attachment's chain and elements; fine when they are gone. Returns what was read."""
        chain = self.chain_name(network, container_id, ifname)
        with self.table.lock():
            old = self.read(chain)
            if old:
                self._apply_tolerating_lost_elements(lambda old: self.delete(self.table.script(), old), old)
            return old

    def _apply_tolerating_lost_elements(self, make_script, old: Attached | None):
        """Apply `make_script(old)`; when one of the recorded elements is gone (deleted by hand, or
        its key taken over), apply it again with only the elements that still jump to `old`'s chain."""
        try:
            self.table.apply(make_script(old))
        except NftError as e:
            if not old or not old.elements or not e.missing:
                raise
            still = tuple(e for e in old.elements if self.holder(*e) == old.chain)
            self.table.apply(make_script(dataclasses.replace(old, elements=still)))

    def take_over(self, elements, own_chain: str):
        """Remove the attachments whose chains the map `elements` jump to (other than `own_chain`),
        in one transaction: their keys (a container address) belong to a new attachment now, and
        they are stale (a container whose DEL never came)."""
        with self.table.lock():
            script = self.table.script()
            for map_name, key in elements:
                holder = self.holder(map_name, key)
                stale = self.read(holder) if holder and holder != own_chain else None
                if stale:
                    self.delete(script, stale)
            self.table.apply(script)

    def holder(self, map_name: str, key: str) -> str | None:
        """The chain an element of `map_name` jumps to, None when there is no such element."""
        try:
            request = b"".join(nft_wire.element_list(map_name, key))
        except nft_wire.Unsupported:
            code, out, _ = run(f"get element {self.table.family} {self.table.name} {map_name} {{ {key} }}")
            found = _VERDICT.search(out) if code == 0 else None   # nft 1.0 prints no JSON here
            return found.group(1) if found else None
        found = _nf_request(nft_wire.GETSETELEM, self.table.family, self.table.name, request)
        return nft_wire.element_jump(found[0]) if found else None

    def gc(self, network: str, valid: set) -> list[Attached]:
        """Remove `network`'s attachment chains whose (container ID, ifname) is not in `valid`; drop
        the table when no attachment chain is left. Returns what was removed."""
        net_hash = network_hash(network)
        keep = {attachment_hash(network, cid, ifname) for cid, ifname in valid}
        with self.table.lock():
            listing = self.table.list()
            if not listing.exists:
                return []
            ours = self.attachment_chains(listing)
            stale = [c for c, (n, a) in ours.items() if n == net_hash and a not in keep]
            removed = [attachments_read(c, listing.in_chain(c)) for c in sorted(stale)]
            script = self.table.script()
            if len(stale) == len(ours):
                script.delete_table()
            else:
                for attached in removed:
                    self.delete(script, attached)
            self.table.apply(script)
            return removed

    def attachment_chains(self, listing: "Listing") -> dict[str, tuple[str, str]]:
        """{chain: (network hash, attachment hash)} of the attachment chains in a table listing."""
        return {c: hashes for c in listing.chains if (hashes := self._parse_chain_name(c))}


def _records(rule_tag: str, words: list[str]) -> list[str]:
    """Comments of the record rules: the tag, the record word, then as many words as fit."""
    records, current = [], []
    for word in words:
        if current and len(comment(rule_tag, _RECORD_WORD, *current, word)) >= COMMENT_LIMIT:
            records.append(comment(rule_tag, _RECORD_WORD, *current))
            current = []
        current.append(word)
    records.append(comment(rule_tag, _RECORD_WORD, *current))
    return records


def attachments_read(chain: str, rules) -> Attached:
    """An attachment chain's rules split into its own rules and what its record rules say."""
    own, elements, notes = [], [], []
    for rule in rules:
        words = rule.words
        if not (words and words[0] == _RECORD_WORD and rule.tag):
            own.append(rule)
            continue
        for word in words[1:]:
            if word.startswith(":"):
                notes.append(word[1:])
            elif "/" in word:
                map_name, *parts = word.split("/")
                elements.append((map_name, " . ".join(parts)))
    return Attached(chain, tuple(own), tuple(elements), tuple(notes))


# ---- tables of the former layout ------------------------------------------------------------------

def remove_legacy(table: Table, network: str, container_id: str, ifname: str) -> tuple["Listing | None", bool]:
    """Rules an earlier podplumb made in a table of the former layout (tagged rules in shared
    chains) go on DEL too, so that an upgraded node is left with nothing; the table goes with its
    last tagged rule. It is listed only when it exists (one nf_tables request says so).
    Returns (listing, table dropped)."""
    if table_exists(table.family, table.name):
        return table.delete_tagged(tag(network, container_id, ifname))
    return None, False


def gc_legacy(table: Table, network: str, valid: set) -> tuple["Listing | None", bool]:
    if table_exists(table.family, table.name):
        return table.delete_network_except(network, valid)
    return None, False


# ---- IP masquerade (the main plugins' ipMasq) -----------------------------------------------------

_MASQ_BASE = BaseChain("nat", "postrouting", 100)
MASQ = Attachments(Table("podplumb-ipmasq"), {"postrouting": _MASQ_BASE},
                   (VerdictMap("saddr4", "ipv4_addr", "postrouting", "ip saddr"),
                    VerdictMap("saddr6", "ipv6_addr", "postrouting", "ip6 saddr")))
LEGACY_MASQ_TABLE = Table("podplumb-masq")      # rules of podplumb before per-attachment chains
_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}


def _masq_rules(addresses) -> list[tuple[str, frozenset, tuple]]:
    """(nft rule text, facts it lists as, map element) for each container address."""
    out = []
    for address in addresses:
        iface = ipaddress.ip_interface(address)
        proto = "ip" if iface.version == 4 else "ip6"
        subnet, multicast = str(iface.network), _MULTICAST[iface.version]
        text = f"{proto} saddr {iface.ip} {proto} daddr != {subnet} {proto} daddr != {multicast} masquerade"
        facts = frozenset({match(f"{proto} saddr", "==", str(iface.ip)),
                           match(f"{proto} daddr", "!=", subnet),
                           match(f"{proto} daddr", "!=", multicast),
                           statement("masquerade")})
        out.append((text, facts, (f"saddr{iface.version}", str(iface.ip))))
    return out


def ensure_masquerade(network: str, container_id: str, ifname: str, addresses: list[str]) -> None:
    """Masquerade traffic from each address to anything outside its subnet (and not multicast).
    Re-running replaces this container's rules in the same transaction. An address still held by
    another attachment's stale rules (a container whose DEL never came) is taken over: the address
    is this container's now."""
    note = comment(tag(network, container_id, ifname), f"{container_id}/{ifname}")
    rules = _masq_rules(addresses)
    wanted = [(text, note) for text, _, _ in rules]
    elements = [element for _, _, element in rules]
    try:
        MASQ.replace(network, container_id, ifname, wanted, elements)
    except NftError as e:
        if not e.exists:
            raise
        MASQ.take_over(elements, MASQ.chain_name(network, container_id, ifname))
        MASQ.replace(network, container_id, ifname, wanted, elements)


def remove_masquerade(network: str, container_id: str, ifname: str) -> None:
    MASQ.remove(network, container_id, ifname)
    remove_legacy(LEGACY_MASQ_TABLE, network, container_id, ifname)


def masquerade_present(network: str, container_id: str, ifname: str, addresses: list[str]) -> bool:
    """True when this container's masquerade rules are exactly those `ensure_masquerade` makes and
    its addresses lead to them."""
    chain = MASQ.chain_name(network, container_id, ifname)
    attached = MASQ.read(chain, expressions=True)
    if attached is None:
        return False
    rules = _masq_rules(addresses)
    actual = sorted((r.facts for r in attached.rules), key=sorted)
    wanted = sorted((facts for _, facts, _ in rules), key=sorted)
    return actual == wanted and all(MASQ.holder(m, key) == chain for _, _, (m, key) in rules)


def gc_masquerade(network: str, valid: set[tuple[str, str]]) -> None:
    """Remove this network's masquerade rules whose (container ID, ifname) is not in `valid`."""
    MASQ.gc(network, valid)
    gc_legacy(LEGACY_MASQ_TABLE, network, valid)
