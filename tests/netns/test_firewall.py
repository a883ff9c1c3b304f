"""firewall chained after bridge: pod traffic through the forward path, same-bridge isolation, cleanup."""

import json

import pytest

from podplumb.runtime import Network, PluginFailed, exec_plugin
from tests import kernel
from tests.conftest import reference_available
from tests.netns.bridge_helpers import pod_addresses
from tests.netns.meta_helpers import VERSIONS, chain, reference_bin

pytestmark = pytest.mark.skipif(not kernel.sh("which", "nft", check=False).stdout, reason="nft missing")
TABLE = ("inet", "podplumb-firewall")


def firewall(policy=None):
    return {"type": "firewall", **({"ingressPolicy": policy} if policy else {})}


def ruleset(ns) -> str:
    return kernel.sh("nft", "list", "ruleset", ns=ns).stdout


def table_json(ns) -> list:
    out = kernel.sh("nft", "-j", "list", "table", *TABLE, ns=ns, check=False)
    return json.loads(out.stdout)["nftables"] if out.returncode == 0 else []


def networks(data_dir, host_ns, cni_bin, policies, version="1.1.0", bin_dir=None, first=77):
    """Bridge networks with firewall, one per policy, on 10.<first + i>.0.0/24 (+ IPv6 from 1.0.0 with ours)."""
    return [Network(chain(data_dir, firewall(policy), version=version, subnet4=f"10.{first + i}.0.0/24",
                          subnet6=None if version < "1.0.0" or bin_dir else f"fd{77 + i}::/64"),
                    bin_dir or cni_bin, host_ns=host_ns) for i, policy in enumerate(policies)]


PAIRS = (("a1", "a2"), ("a2", "a1"), ("a1", "b1"), ("b1", "a2"), ("c1", "a1"), ("a1", "c1"))


def reachability(pods: dict) -> dict:
    """{(from, to): pinged} for PAIRS of pods (name -> (ns, IPv4 address)); 1 s for an answer."""
    return {(a, b): kernel.sh("ping", "-c1", "-W1", pods[b][1], ns=pods[a][0], check=False).returncode == 0
            for a, b in PAIRS}


def attach(net, netns, name) -> tuple:
    ns = netns("pod")
    result = net.add(name, kernel.netns_path(ns))
    return ns, pod_addresses(result)[4]


def four_pods(nets, netns) -> dict:
    """a1, a2 on the first network, b1 on the second, c1 on the third."""
    return {"a1": attach(nets[0], netns, "a1"), "a2": attach(nets[0], netns, "a2"),
            "b1": attach(nets[1], netns, "b1"), "c1": attach(nets[2], netns, "c1")}


def test_same_bridge_networks_are_kept_apart(cni_bin, host_ns, netns, data_dir, tmp_path):
    a, b, c = networks(data_dir, host_ns, cni_bin, ["same-bridge", "same-bridge", "open"])
    pods = four_pods((a, b, c), netns)
    seen = reachability(pods)
    assert seen[("a1", "a2")] and seen[("a2", "a1")], "pods of one network reach each other"
    for x, y in (("a1", "b1"), ("b1", "a2")):
        assert not seen[(x, y)], f"{x} reached {y} across two same-bridge networks"
    assert seen[("c1", "a1")] and seen[("a1", "c1")], "an open network is not isolated"
    for name, net in (("a1", a), ("b1", b), ("c1", c)):
        net.check(name, kernel.netns_path(pods[name][0]))
    for name, net in (("a1", a), ("a2", a), ("b1", b), ("c1", c)):
        net.delete(name, kernel.netns_path(pods[name][0]))
        net.delete(name, kernel.netns_path(pods[name][0]))
    text = ruleset(host_ns)
    assert not any(address in text for _, address in pods.values()), text
    assert not [c for c in table_json(host_ns) if "chain" in c and c["chain"]["name"].startswith("fw-")]
    a.gc([])
    b.gc([])
    assert table_json(host_ns) == [], "GC with no pod left drops the table"

    if reference_available() and kernel.sh("which", "iptables", check=False).stdout:
        # the reference firewall (iptables backend) isolates the same pairs; new subnets, as the
        # first round's bridges stay with their gateway addresses
        reference = networks(data_dir, host_ns, cni_bin, ["same-bridge", "same-bridge", "open"], "1.0.0",
                             reference_bin(tmp_path, "firewall", ours=cni_bin), first=87)
        assert reachability(four_pods(reference, netns)) == seen


@pytest.mark.parametrize("version", VERSIONS)
def test_lifecycle_every_version(cni_bin, host_ns, netns, data_dir, version):
    [net] = networks(data_dir, host_ns, cni_bin, [None], version)
    ns = netns("pod")
    result = net.add("ctr", kernel.netns_path(ns))
    assert result["cniVersion"] == version
    address = pod_addresses(result)
    text = ruleset(host_ns)
    assert all(address[f] in text for f in address)
    if version >= "0.4.0":
        net.check("ctr", kernel.netns_path(ns))
        kernel.sh("nft", "delete", "element", *TABLE, "saddr4", "{", address[4], "}", ns=host_ns)
        with pytest.raises(PluginFailed) as failed:
            net.check("ctr", kernel.netns_path(ns))
        assert failed.value.error["code"] == 105 and address[4] in failed.value.error["details"]
    net.delete("ctr", kernel.netns_path(ns))
    net.delete("ctr", "")
    assert not any(address[f] in ruleset(host_ns) for f in address)


def test_gc_bad_input_and_address_conflict(cni_bin, host_ns, netns, data_dir):
    [net] = networks(data_dir, host_ns, cni_bin, ["same-bridge"])
    ns = netns("pod")
    result = net.add("keep", kernel.netns_path(ns))
    other = netns("pod")
    net.add("stale", kernel.netns_path(other))
    net.gc([("keep", "eth0")])
    chains = [c["chain"]["name"] for c in table_json(host_ns) if "chain" in c]
    assert sum(name.startswith("fw-") for name in chains) == 1 and any(n.startswith("iso-") for n in chains)
    base = {"cniVersion": "1.1.0", "name": net.conflist["name"], "type": "firewall", "prevResult": result}
    before = ruleset(host_ns)
    for keys, words in (({"ingressPolicy": "closed"}, "ingressPolicy"), ({"backend": "pf"}, "backend"),
                        ({"prevResult": None}, "prevResult"),
                        ({"ingressPolicy": "same-bridge", "prevResult": {
                            "cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
                            "ips": [{"address": "10.77.0.99/24", "interface": 0}]}}, "bridge")):
        config = {k: v for k, v in {**base, **keys}.items() if v is not None}
        run = exec_plugin(cni_bin, "firewall", "ADD", config, container_id="x", netns=kernel.netns_path(other),
                          ifname="eth0", host_ns=host_ns)
        assert run.code != 0 and run.json["code"] == 7 and words in run.json["msg"] + run.json.get("details", "")
    # a second attachment claiming the same address fails and changes nothing
    run = exec_plugin(cni_bin, "firewall", "ADD", base, container_id="thief", netns=kernel.netns_path(other),
                      ifname="eth0", host_ns=host_ns)
    assert run.code != 0 and "already in use" in run.json["msg"], run.stdout
    assert ruleset(host_ns) == before
    net.delete("keep", kernel.netns_path(ns))
    net.gc([])
    assert table_json(host_ns) == []
