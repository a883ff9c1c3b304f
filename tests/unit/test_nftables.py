"""cni.nftables: tags, scripts, facts; the masquerade API against a real kernel in a throwaway netns."""

import json
import re
import subprocess
import sys
import textwrap
import time

import pytest

from cni import nftables
from cni.nftables import BaseChain, Rule, Script, facts_of, match, statement
from tests import kernel

# ---- tags -----------------------------------------------------------------------------------------

def test_tag_shape_and_stability():
    tag = nftables.tag("mynet", "abc123", "eth0")
    assert re.fullmatch(r"pp:[0-9a-f]{8}:[0-9a-f]{16}", tag)
    assert tag == nftables.tag("mynet", "abc123", "eth0")
    assert tag.split(":")[1] == nftables.network_hash("mynet")
    assert tag.split(":")[2] == nftables.attachment_hash("mynet", "abc123", "eth0")


def test_tag_differs_per_attachment_but_shares_the_network_hash():
    tags = {nftables.tag("mynet", "abc", "eth0"), nftables.tag("mynet", "abc", "eth1"),
            nftables.tag("mynet", "abd", "eth0"), nftables.tag("other", "abc", "eth0")}
    assert len(tags) == 4
    assert nftables.tag("mynet", "abc", "eth0")[:11] == nftables.tag("mynet", "xyz", "net1")[:11]
    # no ambiguity from concatenation
    assert nftables.attachment_hash("n", "ab", "c") != nftables.attachment_hash("n", "a", "bc")


def test_comment_is_safe_and_short():
    tag = nftables.tag("n", "c", "i")
    text = nftables.comment(tag, 'evil"; flush ruleset', "x" * 200)
    assert text.startswith(tag + " ")
    assert '"' not in text and ";" not in text and " flush" not in text.split(" ", 2)[1]
    assert len(text) == nftables.COMMENT_LIMIT


def test_rule_reads_its_tag():
    tag = nftables.tag("n", "c", "i")
    rule = Rule("postrouting", 7, f"{tag} c/i", ())
    assert rule.tag == tag and rule.words == ["c/i"]
    assert rule.network_hash == nftables.network_hash("n")
    assert rule.attachment_hash == nftables.attachment_hash("n", "c", "i")
    assert Rule("x", 1, "route_localnet br0", ()).tag is None
    assert Rule("x", 1, "", ()).tag is None


# ---- scripts and facts ----------------------------------------------------------------------------

def test_script_text():
    script = Script("podplumb-test")
    assert not script
    script.add_table()
    script.add_chain("dnat")
    script.add_chain("post", BaseChain("nat", "postrouting", 100))
    script.flush_chain("post")
    script.add_rule("post", "ip saddr 10.0.0.5 masquerade", "pp:0:1 c/i")
    script.delete_rule(Rule("post", 42, "", ()))
    script.delete_table()
    assert script.text() == textwrap.dedent("""\
        add table inet podplumb-test
        add chain inet podplumb-test dnat
        add chain inet podplumb-test post { type nat hook postrouting priority 100; policy accept; }
        flush chain inet podplumb-test post
        add rule inet podplumb-test post ip saddr 10.0.0.5 masquerade comment "pp:0:1 c/i"
        delete rule inet podplumb-test post handle 42
        delete table inet podplumb-test
        """)


def test_script_refuses_more_than_one_rule():
    with pytest.raises(ValueError):
        Script("t").add_rule("c", "accept; flush ruleset")


def test_facts_normalise_what_nft_lists():
    listed = [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"prefix": {"addr": "10.1.0.0", "len": 24}}}},
        {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                   "right": "fd00:0:0::5"}},
        {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
        {"dnat": {"family": "ip", "addr": "10.1.0.5", "port": 80}},
        {"masquerade": None},
    ]
    assert facts_of(listed) == {
        match("ip saddr", "==", "10.1.0.0/24"),
        match("ip6 daddr", "!=", "fd00::5"),
        match("ct status", "in", "dnat"),
        statement("dnat", {"family": "ip", "addr": "10.1.0.5", "port": 80}),
        statement("masquerade"),
    }
    # a full-length prefix lists as a plain address
    assert match("ip daddr", "!=", "10.1.0.5/32") == match("ip daddr", "!=", "10.1.0.5")


# ---- the masquerade API, for real -------------------------------------------------------------------

def _in_netns(ns: str, code: str):
    """Run `code` (which may use cni.nftables as `nft`) inside `ns`; return what it prints, as JSON."""
    program = "import json, sys\nfrom cni import nftables as nft\n" + textwrap.dedent(code)
    proc = kernel.sh(sys.executable, "-c", program, ns=ns, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def _masq_lines(ns: str) -> list[str]:
    proc = kernel.sh("nft", "list", "table", "inet", "podplumb-ipmasq", ns=ns, check=False)
    return [line.strip() for line in proc.stdout.splitlines() if "masquerade" in line]


@pytest.fixture
def scratch_ns(netns):
    if subprocess.run(["which", "nft"], capture_output=True).returncode != 0:
        pytest.skip("nft missing")
    return netns("ppnft")


def test_masquerade_ensure_present_remove_gc(scratch_ns):
    ns = scratch_ns
    addresses = ["10.1.0.5/24", "fd00:1::5/64"]
    _in_netns(ns, f"""
        nft.ensure_masquerade("net1", "c1", "eth0", {addresses!r})
        nft.ensure_masquerade("net1", "c1", "eth0", {addresses!r})        # idempotent
        nft.ensure_masquerade("net1", "c2", "eth0", ["10.1.0.6/24"])
        nft.ensure_masquerade("net2", "c9", "eth0", ["10.2.0.9/24"])
    """)
    lines = _masq_lines(ns)
    assert len(lines) == 4
    assert any("ip saddr 10.1.0.5 ip daddr != 10.1.0.0/24 ip daddr != 224.0.0.0/4 masquerade" in l for l in lines)
    assert any("ip6 saddr fd00:1::5 ip6 daddr != fd00:1::/64 ip6 daddr != ff00::/8 masquerade" in l for l in lines)
    assert _in_netns(ns, f"""
        print(json.dumps([nft.masquerade_present("net1", "c1", "eth0", {addresses!r}),
                          nft.masquerade_present("net1", "c1", "eth0", ["10.1.0.5/24"]),
                          nft.masquerade_present("net1", "c1", "eth1", {addresses!r}),
                          nft.masquerade_present("net1", "c2", "eth0", ["10.1.0.7/24"])]))
    """) == [True, False, False, False]
    _in_netns(ns, """
        nft.remove_masquerade("net1", "c1", "eth0")
        nft.remove_masquerade("net1", "c1", "eth0")                      # twice is fine
        nft.gc_masquerade("net1", {("c3", "eth0")})                      # c2 is not valid
    """)
    lines = _masq_lines(ns)
    assert len(lines) == 1 and "10.2.0.9" in lines[0]                    # net2 untouched by net1's GC
    _in_netns(ns, 'nft.gc_masquerade("net2", set())')
    assert kernel.sh("nft", "list", "ruleset", ns=ns).stdout.strip() == ""


def test_masquerade_functions_are_fine_without_a_table(scratch_ns):
    assert _in_netns(scratch_ns, """
        nft.remove_masquerade("net1", "c1", "eth0")
        nft.gc_masquerade("net1", set())
        print(json.dumps(nft.masquerade_present("net1", "c1", "eth0", ["10.1.0.5/24"])))
    """) is False


def test_masquerade_leaves_other_tables_alone(scratch_ns):
    kernel.sh("nft", "-f", "-", ns=scratch_ns, input=textwrap.dedent("""\
        table ip firewall {
            chain post { type nat hook postrouting priority 100; policy accept; oifname "lo" accept; }
        }
        """))
    _in_netns(scratch_ns, """
        nft.ensure_masquerade("net1", "c1", "eth0", ["10.1.0.5/24"])
        nft.remove_masquerade("net1", "c1", "eth0")
    """)
    ruleset = kernel.sh("nft", "list", "ruleset", ns=scratch_ns).stdout
    assert "table ip firewall" in ruleset and "jump pp-" not in ruleset and "chain pp-" not in ruleset
    ours = kernel.sh("nft", "list", "table", "inet", "podplumb-ipmasq", ns=scratch_ns).stdout
    assert "table ip firewall" not in ours and "firewall" in kernel.sh("nft", "list", "tables", ns=scratch_ns).stdout


def test_importing_is_cheap():
    proc = subprocess.run([sys.executable, "-c", "import sys, cni.nftables; print('pyroute2' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_listing_a_missing_table_is_empty(scratch_ns):
    assert _in_netns(scratch_ns, """
        listing = nft.Table("podplumb-none").list()
        print(json.dumps([listing.exists, list(listing.rules)]))
    """) == [False, []]


def test_delete_rules_drops_the_table_with_its_last_tagged_rule(scratch_ns):
    """Partial removal deletes by handle; the last tagged rule takes the table with it, and so does
    a removal that finds a table left with no tagged rule at all (rules flushed by hand)."""
    out = _in_netns(scratch_ns, """
        table = nft.Table("pp-test")
        base = nft.BaseChain("filter", "input", 0)
        t1, t2 = nft.tag("n", "a", "eth0"), nft.tag("n", "b", "eth0")
        table.replace_tagged(t1, "input", base, [("meta mark 1 accept", t1)])
        table.replace_tagged(t2, "input", base, [("meta mark 2 accept", t2)])
        steps = [len(table.list().rules)]
        steps.append(table.delete_tagged(t1)[1])
        steps.append(len(table.list().rules))
        steps.append(table.delete_tagged(t2)[1])
        steps.append(table.list().exists)
        table.replace_tagged(t1, "input", base, [("meta mark 1 accept", t1)])
        nft.run("flush chain inet pp-test input")
        steps.append(table.delete_tagged(t1)[1])
        steps.append(table.list().exists)
        print(json.dumps(steps))
    """)
    assert out == [2, False, 1, True, False, True, False]


# ---- per-attachment chains -------------------------------------------------------------------------

def _ruleset(ns: str) -> str:
    return kernel.sh("nft", "list", "ruleset", ns=ns).stdout


def test_delete_of_one_attachment_leaves_the_others_and_reads_only_its_chain(scratch_ns):
    ns = scratch_ns
    _in_netns(ns, """
        for i in range(30):
            nft.ensure_masquerade("net1", f"c{i}", "eth0", [f"10.1.0.{i + 2}/24"])
        nft.remove_masquerade("net1", "c7", "eth0")
    """)
    ruleset = _ruleset(ns)
    assert ruleset.count("masquerade comment") == 29 and "10.1.0.9 " not in ruleset
    chain = _in_netns(ns, 'print(json.dumps(nft.MASQ.chain_name("net1", "c8", "eth0")))')
    assert f"10.1.0.10 : jump {chain}" in ruleset.replace("\n", " ").replace("\t", "")


def test_masquerade_address_of_a_stale_attachment_is_taken_over(scratch_ns):
    out = _in_netns(scratch_ns, """
        nft.ensure_masquerade("net1", "old", "eth0", ["10.1.0.5/24"])     # its DEL never came
        nft.ensure_masquerade("net1", "new", "eth0", ["10.1.0.5/24"])
        print(json.dumps([nft.masquerade_present("net1", "new", "eth0", ["10.1.0.5/24"]),
                          nft.masquerade_present("net1", "old", "eth0", ["10.1.0.5/24"])]))
    """)
    assert out == [True, False]


def test_masquerade_is_absent_once_its_map_element_is_gone(scratch_ns):
    _in_netns(scratch_ns, 'nft.ensure_masquerade("net1", "c1", "eth0", ["10.1.0.5/24"])')
    kernel.sh("nft", "flush", "map", "inet", "podplumb-ipmasq", "saddr4", ns=scratch_ns)
    assert _in_netns(scratch_ns, """
        print(json.dumps(nft.masquerade_present("net1", "c1", "eth0", ["10.1.0.5/24"])))
    """) is False
    _in_netns(scratch_ns, 'nft.remove_masquerade("net1", "c1", "eth0")')    # the element is gone already
    assert "chain pp-" not in _ruleset(scratch_ns)


def test_gc_removes_a_stale_chain_and_drops_the_table_with_the_last(scratch_ns):
    ns = scratch_ns
    _in_netns(ns, """
        nft.ensure_masquerade("net1", "keep", "eth0", ["10.1.0.5/24"])
        nft.ensure_masquerade("net1", "gone", "eth0", ["10.1.0.6/24"])
        nft.ensure_masquerade("net2", "other", "eth0", ["10.2.0.6/24"])
        nft.gc_masquerade("net1", {("keep", "eth0")})
    """)
    ruleset = _ruleset(ns)
    assert "10.1.0.5" in ruleset and "10.2.0.6" in ruleset and "10.1.0.6" not in ruleset
    _in_netns(ns, 'nft.gc_masquerade("net1", set()); nft.gc_masquerade("net2", set())')
    assert _ruleset(ns).strip() == ""


def test_rules_of_the_former_layout_go_on_delete_and_gc(scratch_ns):
    """A node upgraded from tagged rules in shared chains (table podplumb-masq) is left with nothing."""
    ns = scratch_ns
    _in_netns(ns, """
        old = nft.LEGACY_MASQ_TABLE
        base = nft.BaseChain("nat", "postrouting", 100)
        for cid, ip in (("a", "10.1.0.5"), ("b", "10.1.0.6")):
            t = nft.tag("net1", cid, "eth0")
            old.replace_tagged(t, "postrouting", base, [(f"ip saddr {ip} masquerade", nft.comment(t, cid))])
        nft.remove_masquerade("net1", "a", "eth0")
    """)
    ruleset = _ruleset(ns)
    assert "10.1.0.5" not in ruleset and "10.1.0.6" in ruleset
    _in_netns(ns, 'nft.gc_masquerade("net1", set())')
    assert _ruleset(ns).strip() == ""


def test_attachments_with_concatenated_keys(scratch_ns):
    """The mechanism as another plugin would use it: a map keyed by protocol . port."""
    out = _in_netns(scratch_ns, """
        ports = nft.Attachments(nft.Table("pp-test-ports"), {"input": nft.BaseChain("filter", "input", 0)},
                                (nft.VerdictMap("ports", "inet_proto . inet_service", "input",
                                                "meta l4proto . th dport"),))
        ports.replace("n", "c1", "eth0", [("counter", None)], [("ports", "tcp . 8080"), ("ports", "udp . 53")])
        chain = ports.chain_name("n", "c1", "eth0")
        read = ports.read(chain)
        steps = [sorted(read.elements), ports.holder("ports", "tcp . 8080") == chain]
        ports.replace("n", "c1", "eth0", [("counter", None)], [("ports", "tcp . 8081")])   # re-ADD
        steps.append(ports.holder("ports", "tcp . 8080"))
        ports.remove("n", "c1", "eth0")
        ports.remove("n", "c1", "eth0")
        steps.append(ports.read(chain))
        print(json.dumps(steps))
    """)
    assert out == [[["ports", "tcp . 8080"], ["ports", "udp . 53"]], True, None, None]


@pytest.mark.parametrize("backend", ["netlink", "library", "exec"])
def test_every_way_of_running_a_transaction_does_the_same(scratch_ns, backend):
    """nf_tables messages of our own (the default), libnftables in the process (PODPLUMB_NFT=library),
    or `nft` exec'd (PODPLUMB_NFT=exec, and when the library is missing)."""
    out = _in_netns(scratch_ns, f"""
        import os
        if {backend!r} != "netlink":
            os.environ["PODPLUMB_NFT"] = {backend!r}
        steps = [nft._library() is None]
        nft.ensure_masquerade("net1", "c1", "eth0", ["10.1.0.5/24"])
        nft.ensure_masquerade("net1", "c1", "eth0", ["10.1.0.6/24"])                  # a repeated ADD
        steps.append(nft.masquerade_present("net1", "c1", "eth0", ["10.1.0.6/24"]))
        steps.append(nft.MASQ.holder("saddr4", "10.1.0.5"))
        code, _, error = nft.run("list chain inet podplumb-ipmasq pp-none", json_output=True)
        steps.append([code, "No such file or directory" in error])
        nft.remove_masquerade("net1", "c1", "eth0")
        steps.append(nft.MASQ.read(nft.MASQ.chain_name("net1", "c1", "eth0")))
        print(json.dumps(steps))
    """)
    assert out == [backend == "exec", True, None, [1, True], None]


def test_chain_use_counts_what_refers_to_a_chain(scratch_ns):
    kernel.sh("nft", "-f", "-", ns=scratch_ns, input=textwrap.dedent("""\
        table inet pp-test {
            chain target { }
            chain a { jump target; jump target; }
            chain b { counter; }
        }
        """))
    assert _in_netns(scratch_ns, """
        print(json.dumps([nft.chain_use("inet", "pp-test", c) for c in ("target", "a", "b", "none")]
                         + [nft.chain_use("inet", "pp-none", "a")]
                         + [nft.table_exists("inet", "pp-test"), nft.table_exists("ip", "pp-test"),
                            nft.table_exists("inet", "pp-none")]))
    """) == [2, 2, 1, None, None, True, False, False]


def test_chain_rules_reads_one_chain_from_the_kernel_as_nft_lists_it(scratch_ns):
    """Handles and comments of one chain, the same as `nft list chain` gives, also when the kernel
    answers in several parts (300 rules); None for a chain or table that does not exist."""
    rules = "".join(f'add rule inet pp-test big counter comment "pp:12345678:{i:016x} c{i}/eth0"\n' for i in range(300))
    kernel.sh("nft", "-f", "-", ns=scratch_ns, input="add table inet pp-test\nadd chain inet pp-test big\n"
              "add chain inet pp-test empty\n" + rules)
    out = _in_netns(scratch_ns, """
        table = nft.Table("pp-test")
        fast, listed = table.chain_rules("big"), table.list_chain("big")
        print(json.dumps([[(r.handle, r.comment) for r in fast] == [(r.handle, r.comment) for r in listed],
                          len(fast), fast[-1].attachment_hash, table.chain_rules("empty"),
                          table.chain_rules("none"), nft.Table("pp-none").chain_rules("big")]))
    """)
    assert out == [True, 300, f"{299:016x}", [], None, None]


def test_held_handles_follow_the_namespace_the_process_moves_to(scratch_ns, netns):
    """The libnftables context and the netlink socket stay open between commands (closing them
    would wait for the kernel), one per namespace: a process that moves to another namespace (as a
    daemon's call process does between callers) acts there, not where it first was."""
    other = netns("ppnft2")
    out = _in_netns(scratch_ns, f"""
        import os
        from cni import netlink
        nft.ensure_masquerade("net1", "c1", "eth0", ["10.1.0.5/24"])
        here = nft.MASQ.read(nft.MASQ.chain_name("net1", "c1", "eth0")) is not None
        fd = os.open("/run/netns/{other}", os.O_RDONLY)
        netlink.enter(fd)
        there_before = nft.MASQ.read(nft.MASQ.chain_name("net1", "c1", "eth0"))
        nft.ensure_masquerade("net1", "c2", "eth0", ["10.1.0.6/24"])
        print(json.dumps([here, there_before, nft.chain_use("inet", "podplumb-ipmasq", "postrouting")]))
    """)
    assert out == [True, None, 2]
    assert "10.1.0.5" in _ruleset(scratch_ns) and "10.1.0.6" not in _ruleset(scratch_ns)
    assert "10.1.0.6" in _ruleset(other) and "10.1.0.5" not in _ruleset(other)


def test_an_executable_leaves_its_sockets_to_a_child_that_exits_after_them(scratch_ns):
    """A plugin executable (cni.EXITS_AFTER_ANSWER) hands its held nf_tables sockets to a forked
    child before it exits; the child closes them and exits too, leaving nothing behind."""
    _in_netns(scratch_ns, """
        import os, cni
        cni.EXITS_AFTER_ANSWER = True
        nft.ensure_masquerade("net1", "c1", "eth0", ["10.1.0.5/24"])
        nft.remove_masquerade("net1", "c2", "eth0")
        assert cni.BEFORE_EXIT == [nft._close_held_in_a_child]
        for hook in cni.BEFORE_EXIT:
            hook()
        os._exit(0)
    """)
    assert "10.1.0.5" in _ruleset(scratch_ns)
    deadline = time.monotonic() + 5
    while kernel.sh("ip", "netns", "pids", scratch_ns).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kernel.sh("ip", "netns", "pids", scratch_ns).stdout.strip() == ""
