"""bridge with every meta plugin after it, in both execution modes (executables, node daemon): what
each one made is in place, CHECK passes, and DEL leaves nothing."""


from podplumb.runtime import Network
from tests import kernel
from tests.netns.bridge_helpers import pod_addresses
from tests.netns.meta_helpers import chain, link, sysctl

MAC = "0a:58:0a:4d:00:77"
LIMITS = {"ingressRate": 20_000_000, "ingressBurst": 400_000, "egressRate": 20_000_000, "egressBurst": 400_000}


def test_chain_of_every_meta_plugin(plugin_host, netns, data_dir, tmp_path):
    tuning_dir = tmp_path / "tuning"
    conflist = chain(data_dir,
                     {"type": "bandwidth", "capabilities": {"bandwidth": True}},
                     {"type": "tuning", "mtu": 1400, "dataDir": str(tuning_dir), "capabilities": {"mac": True},
                      "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2", "net.core.somaxconn": "2048"}},
                     {"type": "firewall", "ingressPolicy": "same-bridge"},
                     {"type": "sbr"}, subnet6=None)
    net = plugin_host.network(conflist)
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod), capability_args={"bandwidth": LIMITS, "mac": MAC})
    address = pod_addresses(result)[4]
    eth0 = link(pod)
    assert eth0["mtu"] == 1400 and eth0["address"] == MAC
    assert sysctl(pod, "net.ipv4.conf.eth0.rp_filter") == "2" and sysctl(pod, "net.core.somaxconn") == "2048"
    ifb = next(i["name"] for i in result["interfaces"] if i["name"].startswith("bwp"))
    assert kernel.ip_json("link", "show", ifb, ns=plugin_host.ns)
    assert address in kernel.sh("nft", "list", "table", "inet", "podplumb-firewall", ns=plugin_host.ns).stdout
    rules = kernel.ip_json("rule", "show", ns=pod)
    [table] = [r["table"] for r in rules if r.get("src") == address]
    assert [r["dst"] for r in kernel.ip_json("route", "show", "table", table, ns=pod)] == ["default", "10.77.0.0/24"]

    net.delete("ctr", kernel.netns_path(pod))
    assert not kernel.ip_json("-d", "link", "show", "type", "ifb", ns=plugin_host.ns)
    assert address not in kernel.sh("nft", "list", "ruleset", ns=plugin_host.ns).stdout
    assert not [r for r in kernel.ip_json("rule", "show", ns=pod) if r.get("src") == address]
    assert list(tuning_dir.iterdir()) == []
    net.delete("ctr", kernel.netns_path(pod))
    net.delete("ctr", "")


def test_gc_keeps_only_valid_attachments(cni_bin, host_ns, netns, data_dir, tmp_path):
    tuning_dir = tmp_path / "tuning"
    net = Network(chain(data_dir, {"type": "bandwidth", "capabilities": {"bandwidth": True}},
                        {"type": "tuning", "mtu": 1400, "dataDir": str(tuning_dir)},
                        {"type": "firewall"}, subnet6=None), cni_bin, host_ns=host_ns)
    pods = {name: netns("pod") for name in ("keep", "gone")}
    results = {name: net.add(name, kernel.netns_path(ns), capability_args={"bandwidth": LIMITS})
               for name, ns in pods.items()}
    net.gc([("keep", "eth0")])
    ifbs = [l["ifname"] for l in kernel.ip_json("-d", "link", "show", "type", "ifb", ns=host_ns)]
    assert ifbs == [next(i["name"] for i in results["keep"]["interfaces"] if i["name"].startswith("bwp"))]
    assert [p.name for p in tuning_dir.iterdir()] == ["keep-eth0.json"]
    rules = kernel.sh("nft", "list", "table", "inet", "podplumb-firewall", ns=host_ns).stdout
    assert pod_addresses(results["keep"])[4] in rules and pod_addresses(results["gone"])[4] not in rules
    net.delete("keep", kernel.netns_path(pods["keep"]))
    net.gc([])
    assert not kernel.ip_json("-d", "link", "show", "type", "ifb", ns=host_ns)
    assert kernel.sh("nft", "list", "table", "inet", "podplumb-firewall", ns=host_ns, check=False).returncode != 0
