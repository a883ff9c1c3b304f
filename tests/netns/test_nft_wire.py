"""cni.nft_wire against nft itself: the same rule text, sent by nft and by us, must reach the kernel as
the same expressions; the same objects must list the same. Compared in throwaway namespaces."""

import json
import sys
import textwrap

import pytest

from cni import nft_wire
from tests import kernel

# Rule texts as podplumb's plugins build them (ipMasq, portmap's fixed, DNAT, hairpin and guard rules).
RULES = [
    "ip saddr 10.1.0.5 ip daddr != 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade",
    "ip saddr 10.1.0.5 ip daddr != 10.0.0.0/12 ip daddr != 224.0.0.0/4 masquerade",
    "ip saddr 192.168.7.9 ip daddr != 192.168.7.8/31 ip daddr != 224.0.0.0/4 masquerade",
    "ip6 saddr fd00::5 ip6 daddr != fd00::/64 ip6 daddr != ff00::/8 masquerade",
    "ip6 saddr fd00:1:2::5 ip6 daddr != fd00:1::/44 ip6 daddr != ff00::/8 masquerade",
    "return", "drop", "accept", "jump hostports",
    "ip saddr vmap @saddr4", "ip6 saddr vmap @saddr6", "ip daddr vmap @saddr4", "ip6 daddr vmap @saddr6",
    "meta l4proto . th dport vmap @ports", "iifname vmap @guards",
    "fib daddr type local jump hostports", "ip6 daddr ::1 return",
    "meta nfproto ipv4 tcp dport 8080 dnat ip to 10.1.0.5:80",
    "meta nfproto ipv4 ip daddr 127.0.0.1 tcp dport 8080 dnat ip to 10.1.0.5:80",
    "meta nfproto ipv4 ip daddr 192.0.2.10 udp dport 53 dnat ip to 10.1.0.5:5353",
    "meta nfproto ipv6 sctp dport 9 dnat ip6 to [fd00::5]:9",
    "meta nfproto ipv6 ip6 daddr 2001:db8::1 udp dport 53 dnat ip6 to [fd00::5]:53",
    "meta nfproto ipv4 ip saddr 10.1.0.0/16 ip daddr 10.1.0.5 tcp dport 80 ct status dnat masquerade",
    "meta nfproto ipv4 ip saddr 127.0.0.0/8 ip daddr 10.1.0.5 tcp dport 80 ct status dnat masquerade",
    "meta nfproto ipv4 ip daddr 10.1.0.5 udp dport 53 ct status dnat masquerade",
    "meta nfproto ipv6 ip6 saddr fd00::/64 ip6 daddr fd00::5 tcp dport 80 ct status dnat masquerade",
    "ip daddr 127.0.0.0/8 drop",
    "meta nfproto ipv4 tcp dport 80 tcp dport 81 drop",          # one dependency for both, as nft adds
]
BRIDGE_RULES = ["ether saddr != 0a:58:0a:01:00:05 drop", "ether daddr 02:00:00:00:00:01 accept",
                "iifname vmap @ports", "return", "jump by-nft"]
SETUP = """\
add table inet t
add map inet t ports { type inet_proto . inet_service : verdict; }
add map inet t saddr4 { type ipv4_addr : verdict; }
add map inet t saddr6 { type ipv6_addr : verdict; }
add map inet t guards { type ifname : verdict; }
add chain inet t hostports
add chain inet t by-nft
add chain inet t by-us
"""


def _run(ns: str, code: str):
    program = "import json\nfrom cni import nftables, nft_wire\n" + textwrap.dedent(code)
    proc = kernel.sh(sys.executable, "-c", program, ns=ns, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.fixture
def ns(netns):
    return netns("ppwire")


@pytest.mark.parametrize("family, rules", [("inet", RULES), ("bridge", BRIDGE_RULES)])
def test_every_rule_reaches_the_kernel_as_nft_sends_it(ns, family, rules):
    setup = SETUP if family == "inet" else SETUP.replace("inet t", "bridge t").replace(
        "inet_proto . inet_service", "ifname")
    kernel.sh("nft", "-f", "-", ns=ns, input=setup)
    for text in rules:
        kernel.sh("nft", "add", "rule", family, "t", "by-nft", text, "comment", f'"{text[:40]}"', ns=ns)
    out = _run(ns, f"""
        table = nftables.Table("t", family={family!r})
        script = table.script()
        for text in {rules!r}:
            script.add_rule("by-us", text, text[:40])
        assert script.messages() is not None
        table.apply(script)
        dumped = {{}}
        for chain in ("by-nft", "by-us"):
            attrs = nftables._nf_request(nft_wire.GETRULE, {family!r}, "t", nftables.rtnl.string(2, chain), dump=True)
            dumped[chain] = [[a[4].hex(), a[7].hex()] for a in attrs]      # expressions, user data
        print(json.dumps(dumped))
    """)
    assert len(out["by-us"]) == len(rules)
    for text, ours, theirs in zip(rules, out["by-us"], out["by-nft"]):
        assert ours == theirs, text
    listed = {chain: [line.strip() for line in kernel.sh("nft", "list", "chain", family, "t", chain, ns=ns)
                      .stdout.splitlines()[2:-2]] for chain in ("by-nft", "by-us")}
    assert listed["by-us"] == listed["by-nft"]


def test_objects_list_as_nft_makes_them(ns):
    """Tables, base chains, maps, elements, flushes and deletions: made once through nft, once through
    netlink, the two tables list the same."""
    out = _run(ns, """
        import os
        from cni.nftables import BaseChain
        def build(table):
            s = table.script()
            s.add_table()
            for name, key in (("ports", "inet_proto . inet_service"), ("saddr4", "ipv4_addr"),
                              ("saddr6", "ipv6_addr"), ("guards", "ifname")):
                s.add_map(name, key)
            s.add_chain("postrouting", BaseChain("nat", "postrouting", 100))
            s.add_chain("prerouting", BaseChain("nat", "prerouting", -100))
            s.add_chain("guard", BaseChain("filter", "prerouting", -300))
            s.create_chain("pp-1")
            s.add_chain("gone")
            s.add_rule("pp-1", "return", "record")
            s.add_rule("gone", "drop")
            s.add_element("saddr4", "10.1.0.5", "pp-1")
            s.add_element("saddr6", "fd00::5", "pp-1")
            s.add_element("ports", "tcp . 8080", "pp-1")
            s.add_element("ports", "udp . 53", "gone")
            s.add_element("guards", '"eth0"', "pp-1")
            s.add_element("guards", "veth1234", "gone")
            return s
        def remove(table):
            s = table.script()
            s.delete_element("ports", "udp . 53")
            s.delete_element("guards", "veth1234")
            s.flush_chain("gone")
            s.delete_chain("gone")
            return s
        wire, nft = nftables.Table("by-us"), nftables.Table("by-nft")
        assert build(wire).messages() is not None and remove(wire).messages() is not None
        wire.apply(build(wire))
        wire.apply(remove(wire))
        os.environ["PODPLUMB_NFT"] = "library"
        nft.apply(build(nft))
        nft.apply(remove(nft))
    """)
    assert out is None
    listed = [kernel.sh("nft", "list", "table", "inet", t, ns=ns).stdout.replace(t, "T") for t in ("by-us", "by-nft")]
    assert "pp-1" in listed[0] and "gone" not in listed[0]
    assert listed[0] == listed[1]


def test_an_element_is_asked_for_alone(ns):
    """Which chain a map element jumps to, asked of the kernel for that element, whatever its key type
    (the bridge family's macspoofchk map too)."""
    kernel.sh("nft", "-f", "-", ns=ns, input=SETUP + textwrap.dedent("""\
        add element inet t ports { tcp . 8080 : jump hostports }
        add element inet t saddr4 { 10.1.0.5 : jump by-nft }
        add element inet t saddr6 { fd00::5 : jump by-us }
        add element inet t guards { "eth0" : jump hostports }
        add table bridge b
        add map bridge b ports { type ifname : verdict; }
        add chain bridge b c
        add element bridge b ports { veth1234 : jump c }
        """))
    out = _run(ns, """
        inet = nftables.Attachments(nftables.Table("t"), {})
        bridge = nftables.Attachments(nftables.Table("b", family="bridge"), {})
        print(json.dumps([inet.holder("ports", "tcp . 8080"), inet.holder("ports", "udp . 8080"),
                          inet.holder("saddr4", "10.1.0.5"), inet.holder("saddr6", "fd00::5"),
                          inet.holder("guards", '"eth0"'), inet.holder("guards", '"eth1"'),
                          inet.holder("nomap", "10.1.0.5"), bridge.holder("ports", "veth1234")]))
    """)
    assert out == ["hostports", None, "by-nft", "by-us", "hostports", None, None, "c"]


def test_a_refused_command_fails_the_whole_transaction_in_nfts_words(ns):
    out = _run(ns, """
        table = nftables.Table("t")
        s = table.script()
        s.add_table()
        s.create_chain("c")
        table.apply(s)
        again = table.script()
        again.add_chain("d")
        again.create_chain("c")
        try:
            table.apply(again)
        except nftables.NftError as e:
            print(json.dumps([e.stderr, nftables.chain_use("inet", "t", "d")]))
    """)
    assert out == ["File exists: create chain inet t c", None]      # nothing of it was kept


@pytest.mark.parametrize("text", [
    "ip saddr 10.0.0.1 counter", "oifname != \"br0\" oifname @isolated drop", "ip saddr 10.0.0.0/33 drop",
    "tcp dport 70000 drop", "dnat ip to [fd00::1]:80", "meta mark 1 drop", "ip saddr", "ether saddr 0a:00:00:00:00:01 drop",
])
def test_what_it_does_not_know_is_left_to_nft(text):
    with pytest.raises(nft_wire.Unsupported):
        nft_wire.rule_expressions(text)


@pytest.mark.parametrize("text", ["ip saddr 10.0.0.1 drop", "tcp dport 80 accept", "masquerade", "ether saddr 0a:00 drop"])
def test_the_bridge_family_takes_only_ether_matches_lookups_and_verdicts(text):
    with pytest.raises(nft_wire.Unsupported):
        nft_wire.rule_expressions(text, "bridge")


def test_other_families_are_left_to_nft():
    with pytest.raises(nft_wire.Unsupported):
        nft_wire.encode("ip", "t", ("add table",))

