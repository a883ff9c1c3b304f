"""portmap ADD/DEL/CHECK/GC/STATUS against a real kernel: conflicts, scale, concurrency, cleanup."""

import concurrent.futures
import json

import pytest

from cni import nftables
from plugins.portmap.rules import ATTACHMENTS
from podplumb.runtime import PluginFailed
from tests import kernel
from tests.netns.test_portmap_env import HOST_EXT, HOST_EXT_OTHER, SERVER_PORT, bin_dir, environment, mappings, request

pytestmark = pytest.mark.skipif(not kernel.sh("which", "nft", check=False).stdout, reason="nft missing")

PREV_RESULT = {
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
    "ips": [{"address": "10.244.9.5/24", "interface": 0}, {"address": "fd00:9::5/64", "interface": 0}],
}


@pytest.fixture
def env(host_ns, netns, cni_bin, data_dir, tmp_path):
    with environment(host_ns, netns, bin_dir(tmp_path, cni_bin), data_dir) as made:
        yield made


def _portmap_table(env) -> dict:
    out = kernel.sh("nft", "-j", "list", "table", "inet", "podplumb-hostports", ns=env.host, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {"nftables": []}


def _dnat_rules(env, container_id: str) -> list[tuple[str, int]]:
    """(host port chain, handle) of the container's DNAT rules."""
    return [(item["rule"]["chain"], item["rule"]["handle"]) for item in _portmap_table(env)["nftables"]
            if "rule" in item and item["rule"]["chain"].startswith("hp-")
            and f" {container_id}/" in item["rule"].get("comment", "")]


def test_conflicting_host_port_names_the_holder_and_leaves_nothing(env):
    env.pod("holder", mappings((8080, SERVER_PORT)), serve=False)
    before = env.ruleset()
    with pytest.raises(PluginFailed) as failure:
        env.pod("second", mappings((9000, SERVER_PORT), (8080, SERVER_PORT)), serve=False)
    error = failure.value.error
    assert error["code"] == 104
    assert "holder/eth0" in error["msg"] and "tcp/8080" in error["msg"]
    assert "tcp/8080" not in error.get("details", ""), "the holder and port are said once"
    assert env.ruleset() == before
    # the other protocol, and another port, are free
    env.pod("udp-user", mappings((8080, SERVER_PORT, "udp")), serve=False)


def test_wildcard_and_specific_host_ip_overlap(env):
    env.pod("specific", mappings((9090, SERVER_PORT, "tcp", HOST_EXT[0])), serve=False)
    with pytest.raises(PluginFailed) as failure:
        env.pod("wildcard", mappings((9090, SERVER_PORT)), serve=False)
    assert failure.value.error["code"] == 104 and "specific/eth0" in failure.value.error["msg"]
    # another host address of the same port is free; the same one is not
    env.pod("other-ip", mappings((9090, SERVER_PORT, "tcp", HOST_EXT_OTHER[0])), serve=False)
    with pytest.raises(PluginFailed) as failure:
        env.pod("same-ip", mappings((9090, SERVER_PORT, "tcp", HOST_EXT[0])), serve=False)
    assert failure.value.error["code"] == 104
    # IPv6 port 9090 was never claimed (both hostIPs are IPv4)
    env.pod("v6", mappings((9090, SERVER_PORT, "tcp", HOST_EXT[1])), serve=False)


def test_re_add_replaces_the_containers_rules(env):
    pod = env.pod("pod-a", mappings((8080, SERVER_PORT)))
    prev = env.network.cache[("pod-a", "eth0")][0]
    config = {"cniVersion": prev["cniVersion"], "prevResult": prev, "runtimeConfig": mappings((8081, SERVER_PORT))}
    assert env.portmap("ADD", "pod-a", config, netns=kernel.netns_path(pod.ns)).code == 0
    assert request(env.client, "tcp", HOST_EXT[0], 8081) is not None
    assert request(env.client, "tcp", HOST_EXT[0], 8080) is None
    assert all("8080" not in line for line in env.tagged_rules("pod-a"))


def test_hundred_mappings_on_one_container(env):
    many = mappings(*[(20000 + i, SERVER_PORT, "tcp" if i % 2 else "udp") for i in range(100)])
    pod = env.pod("big", many)
    for i in (0, 1, 50, 98, 99):
        proto = "tcp" if i % 2 else "udp"
        assert request(env.client, proto, HOST_EXT[0], 20000 + i) == ("big", "192.0.2.2")
        assert request(env.client, proto, HOST_EXT[1], 20000 + i) == ("big", "2001:db8:e::2")
    assert len(_dnat_rules(env, "big")) == 200                         # 100 mappings x 2 families
    env.network.check("big", kernel.netns_path(pod.ns))
    env.delete(pod)
    assert env.pod_rules_left() == []


def test_twenty_containers_concurrently_leave_the_ruleset_as_before(env):
    names = [f"par-{i}" for i in range(20)]
    spaces = {name: env.make_ns("pppod") for name in names}

    def add(i, name):
        return env.network.add(name, kernel.netns_path(spaces[name]), capability_args=mappings((30000 + i, SERVER_PORT)))

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        list(pool.map(add, range(20), names))
    for i, name in enumerate(names):
        assert len(_dnat_rules(env, name)) == 2, name
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda n: env.network.delete(n, kernel.netns_path(spaces[n])), names))
    assert env.pod_rules_left() == []


def test_check_fails_once_a_rule_is_deleted_by_hand(env):
    pod = env.pod("pod-a", mappings((8080, SERVER_PORT), (8081, SERVER_PORT, "udp")), serve=False)
    env.network.check("pod-a", kernel.netns_path(pod.ns))
    chain, handle = _dnat_rules(env, "pod-a")[1]
    kernel.sh("nft", "delete", "rule", "inet", "podplumb-hostports", chain, "handle", str(handle), ns=env.host)
    with pytest.raises(PluginFailed) as failure:
        env.network.check("pod-a", kernel.netns_path(pod.ns))
    assert failure.value.error["code"] == 105
    assert f"missing in {chain}" in failure.value.error["details"]


def test_check_fails_when_the_masquerade_rules_are_gone(env):
    pod = env.pod("pod-a", mappings((8080, SERVER_PORT)), serve=False)
    chain = ATTACHMENTS.chain_name(env.network.conflist["name"], "pod-a", "eth0")
    kernel.sh("nft", "flush", "chain", "inet", "podplumb-hostports", chain, ns=env.host)
    with pytest.raises(PluginFailed) as failure:
        env.network.check("pod-a", kernel.netns_path(pod.ns))
    assert "missing in postrouting" in failure.value.error["details"]


def test_check_fails_when_a_host_port_no_longer_leads_to_its_chain(env):
    pod = env.pod("pod-a", mappings((8080, SERVER_PORT)), serve=False)
    kernel.sh("nft", "flush", "map", "inet", "podplumb-hostports", "ports", ns=env.host)
    with pytest.raises(PluginFailed) as failure:
        env.network.check("pod-a", kernel.netns_path(pod.ns))
    assert "tcp . 8080 does not lead to chain hp-tcp-8080" in failure.value.error["details"]


def test_delete_twice_with_empty_netns_and_without_prev_result(env):
    pod = env.pod("pod-a", mappings((8080, SERVER_PORT)), serve=False)
    env.pod("pod-b", mappings((8081, SERVER_PORT)), serve=False)
    # DEL as a runtime does when the sandbox is gone: no CNI_NETNS, no prevResult
    run = env.portmap("DEL", "pod-a", {"runtimeConfig": mappings((8080, SERVER_PORT))})
    assert run.code == 0, run.stdout
    assert env.tagged_rules("pod-a") == []
    assert env.tagged_rules("pod-b") != []
    # and again, through the whole chain, twice
    env.delete(pod)
    env.network.delete("pod-a", kernel.netns_path(pod.ns))


def test_gc_keeps_only_valid_attachments(env):
    for name, port in (("keep", 8080), ("stale", 8081)):
        env.pod(name, mappings((port, SERVER_PORT)), serve=False)
    run = env.portmap("GC", "", {"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    assert run.code == 0, run.stdout
    assert env.tagged_rules("keep") != [] and env.tagged_rules("stale") == []
    other_network = env.portmap("GC", "", {"name": "othernet", "cni.dev/valid-attachments": []})
    assert other_network.code == 0 and env.tagged_rules("keep") != []
    env.portmap("GC", "", {"cni.dev/valid-attachments": []})
    assert env.ruleset().strip() == ""


def test_status(env):
    run = env.portmap("STATUS", "", {})
    assert run.code == 0, run.stdout


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_every_version_adds_and_deletes(env, version):
    prev = dict(PREV_RESULT, cniVersion=version)
    if version.startswith("0.3"):
        prev["ips"] = [dict(ip, version="4" if "." in ip["address"] else "6") for ip in prev["ips"]]
    config = {"cniVersion": version, "prevResult": prev, "runtimeConfig": mappings((8080, 80))}
    run = env.portmap("ADD", "ver", config, netns=kernel.netns_path(env.client))
    assert run.code == 0, run.stdout
    assert run.json["ips"][0]["address"] == "10.244.9.5/24"            # prevResult passed through
    assert len(env.tagged_rules("ver")) == 2 + 3                          # 2 DNAT, 3 masquerade
    if version != "0.3.0" and version != "0.3.1":
        assert env.portmap("CHECK", "ver", config, netns=kernel.netns_path(env.client)).code == 0
    assert env.portmap("DEL", "ver", config).code == 0
    assert env.pod_rules_left() == []


def test_iptables_only_keys_are_ignored_with_a_message(env):
    config = {"prevResult": PREV_RESULT, "runtimeConfig": mappings((8080, 80)), "backend": "iptables",
              "markMasqBit": 13, "externalSetMarkChain": "KUBE-MARK-MASQ"}
    run = env.portmap("ADD", "legacy", config, netns=kernel.netns_path(env.client))
    assert run.code == 0, run.stdout
    for key in ("backend", "markMasqBit", "externalSetMarkChain"):
        assert key.encode() in run.stderr


def test_add_without_prev_result_is_refused(env):
    run = env.portmap("ADD", "lonely", {"runtimeConfig": mappings((8080, 80))}, netns=kernel.netns_path(env.client))
    assert run.code == 1 and run.json["code"] == 7


def test_rules_of_the_former_table_go_on_delete_and_gc(env):
    """A node upgraded from the former layout (tagged rules in shared chains of `podplumb-portmap`)
    is left with nothing, and route_localnet goes back off with the former table's last rule."""
    network = env.network.conflist["name"]
    tags = {cid: nftables.tag(network, cid, "eth0") for cid in ("old-a", "old-b")}
    kernel.sh("nft", "-f", "-", ns=env.host, input=(
        "add table inet podplumb-portmap\n"
        "add chain inet podplumb-portmap hostports\n"
        "add chain inet podplumb-portmap localnet-guard { type filter hook prerouting priority -300; }\n"
        f'add rule inet podplumb-portmap hostports tcp dport 7001 dnat ip to 10.244.9.5:80 comment "{tags["old-a"]} tcp/7001@0.0.0.0 old-a/eth0"\n'
        f'add rule inet podplumb-portmap hostports tcp dport 7002 dnat ip to 10.244.9.6:80 comment "{tags["old-b"]} tcp/7002@0.0.0.0 old-b/eth0"\n'
        f'add rule inet podplumb-portmap localnet-guard iifname "{env.bridge}" ip daddr 127.0.0.0/8 drop comment "route_localnet {env.bridge}"\n'))
    kernel.sh("ip", "link", "add", env.bridge, "type", "bridge", ns=env.host)    # no pod made it here
    kernel.sh("sysctl", "-qw", f"net.ipv4.conf.{env.bridge}.route_localnet=1", ns=env.host)
    assert env.portmap("DEL", "old-a", {}).code == 0
    assert "7001" not in env.ruleset() and "7002" in env.ruleset()
    assert env.portmap("GC", "", {"cni.dev/valid-attachments": []}).code == 0
    assert "podplumb-portmap" not in env.ruleset()
    flag = kernel.sh("sysctl", "-n", f"net.ipv4.conf.{env.bridge}.route_localnet", ns=env.host)
    assert flag.stdout.strip() == "0"


def test_two_host_addresses_share_a_port_chain_until_the_last_goes(env):
    a = env.pod("ip-a", mappings((9090, SERVER_PORT, "tcp", HOST_EXT[0])))
    b = env.pod("ip-b", mappings((9090, SERVER_PORT, "tcp", HOST_EXT_OTHER[0])))
    assert len(_dnat_rules(env, "ip-a")) == 1 and len(_dnat_rules(env, "ip-b")) == 1
    env.delete(a)
    assert request(env.client, "tcp", HOST_EXT_OTHER[0], 9090) == ("ip-b", "192.0.2.2")
    assert _dnat_rules(env, "ip-a") == [] and "chain hp-tcp-9090" in env.ruleset()
    env.delete(b)
    assert env.pod_rules_left() == []
