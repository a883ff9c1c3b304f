"""bandwidth chained after bridge: tbf on the host side, ifb for the pod's egress, measured with iperf3."""

import json
import subprocess
import time

import pytest

from plugins.bandwidth.plugin import ifb_name
from podplumb.runtime import Network, PluginFailed, exec_plugin
from tests import kernel
from tests.conftest import reference_available
from tests.netns.meta_helpers import VERSIONS, chain, reference_bin

RATE = 20_000_000          # bits/s
BURST = 400_000            # bits
LIMITS = {"ingressRate": RATE, "ingressBurst": BURST, "egressRate": RATE, "egressBurst": BURST}
BANDWIDTH = {"type": "bandwidth", "capabilities": {"bandwidth": True}}
SECONDS = 2


def qdiscs(ns, dev) -> dict:
    """{kind: qdisc} of the device, as tc lists them."""
    out = kernel.sh("tc", "-j", "qdisc", "show", "dev", dev, ns=ns).stdout
    return {q["kind"]: q for q in json.loads(out or "[]")}


def host_veth(result):
    return next(i["name"] for i in result["interfaces"] if not i.get("sandbox") and i["name"].startswith("veth"))


def ifbs(ns):
    return [l["ifname"] for l in kernel.ip_json("-d", "link", "show", "type", "ifb", ns=ns)]


def iperf(client_ns, server_ns, server_ip, reverse=False) -> float:
    """Mbit/s received, over a short TCP run."""
    port = 5201 + int(time.monotonic() * 1000) % 1000
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip,
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if kernel.sh("ss", "-ltn", f"sport = :{port}", ns=server_ns).stdout.count("\n") > 1:
                break
            time.sleep(0.05)
        argv = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(SECONDS), "-J", "-O", "1"]
        out = kernel.sh(*argv, *(["-R"] if reverse else []), ns=client_ns, timeout=30).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.kill()
        server.wait()


def test_rate_holds_both_ways_and_del_removes_everything(cni_bin, host_ns, netns, data_dir):
    net = Network(chain(data_dir, BANDWIDTH, subnet6=None), cni_bin, host_ns=host_ns)
    pod = netns("pod")
    go_names = {k[0].upper() + k[1:]: v for k, v in LIMITS.items()}   # as containerd sends them
    result = net.add("ctr", kernel.netns_path(pod), capability_args={"bandwidth": go_names})
    [ifb] = ifbs(host_ns)
    assert ifb.startswith("bwp") and any(i["name"] == ifb for i in result["interfaces"])
    gateway = result["ips"][0]["gateway"]
    egress = iperf(pod, host_ns, gateway)                 # pod -> host: through the ifb
    ingress = iperf(pod, host_ns, gateway, reverse=True)  # host -> pod: the veth's tbf
    print(f"bandwidth 20 Mbit/s: pod->host {egress:.2f} Mbit/s, host->pod {ingress:.2f} Mbit/s")
    for measured in (egress, ingress):
        assert 0.85 * RATE / 1e6 <= measured <= 1.08 * RATE / 1e6
    net.check("ctr", kernel.netns_path(pod))
    kernel.sh("tc", "qdisc", "del", "dev", ifb, "root", ns=host_ns)
    with pytest.raises(PluginFailed) as failed:
        net.check("ctr", kernel.netns_path(pod))
    assert failed.value.error["code"] == 105 and ifb in failed.value.error["details"]
    net.delete("ctr", kernel.netns_path(pod))
    assert ifbs(host_ns) == []
    net.delete("ctr", kernel.netns_path(pod))


@pytest.mark.parametrize("version", VERSIONS)
def test_config_keys_every_version(cni_bin, host_ns, netns, data_dir, version):
    """The limits in the config itself; a repeated ADD replaces the qdiscs; no limits: nothing shaped."""
    net = Network(chain(data_dir, {**BANDWIDTH, **LIMITS, "egressRate": RATE // 2}, version=version),
                  cni_bin, host_ns=host_ns)
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    assert result["cniVersion"] == version
    veth = host_veth(result)
    assert qdiscs(host_ns, veth)["tbf"]["options"]["rate"] == RATE // 8
    [ifb] = ifbs(host_ns)
    assert qdiscs(host_ns, ifb)["tbf"]["options"]["rate"] == RATE // 16
    assert "ingress" in qdiscs(host_ns, veth)
    config = net.config(net.conflist["plugins"][1], prev_result=net.cache[("ctr", "eth0")][0])
    again = exec_plugin(cni_bin, "bandwidth", "ADD", config, container_id="ctr", netns=kernel.netns_path(pod),
                        ifname="eth0", host_ns=host_ns)
    assert again.code == 0, again.stdout
    assert ifbs(host_ns) == [ifb]
    if version >= "0.4.0":
        net.check("ctr", kernel.netns_path(pod))
    net.delete("ctr", kernel.netns_path(pod))
    assert ifbs(host_ns) == []
    plain = Network(chain(data_dir, BANDWIDTH, version=version), cni_bin, host_ns=host_ns)
    other = netns("pod")
    result = plain.add("ctr2", kernel.netns_path(other))
    assert "tbf" not in qdiscs(host_ns, host_veth(result)) and ifbs(host_ns) == []
    plain.delete("ctr2", kernel.netns_path(other))


def test_unshaped_subnets(cni_bin, host_ns, netns, data_dir):
    """Traffic to and from the host's bridge address is left alone, all else is shaped."""
    net = Network(chain(data_dir, BANDWIDTH, subnet6=None), cni_bin, host_ns=host_ns)
    pod = netns("pod")
    limits = dict(LIMITS, unshapedSubnets=["10.77.0.1/32", "fd00:1::/64"])
    result = net.add("ctr", kernel.netns_path(pod), capability_args={"bandwidth": limits})
    veth = host_veth(result)
    [ifb] = ifbs(host_ns)
    for dev in (veth, ifb):
        assert "htb" in qdiscs(host_ns, dev)
        filters = kernel.sh("tc", "filter", "show", "dev", dev, ns=host_ns).stdout
        assert "0a4d0001/ffffffff" in filters and "flowid 1:2" in filters
    net.check("ctr", kernel.netns_path(pod))
    unshaped = iperf(pod, host_ns, result["ips"][0]["gateway"])
    print(f"bandwidth, unshaped subnet: pod->host {unshaped:.0f} Mbit/s")
    assert unshaped > 3 * RATE / 1e6
    net.delete("ctr", kernel.netns_path(pod))
    assert ifbs(host_ns) == []


BAD_INPUT = [
    ({"ingressBurst": 1000}, "ingressRate"),
    ({"egressRate": -1, "egressBurst": 10}, "non-negative"),
    ({"egressRate": "1M", "egressBurst": 10}, "integer"),
    ({"ingressRate": 1000, "ingressBurst": 2**40}, "too large"),
    ({**LIMITS, "shapedSubnets": ["10.0.0.0/8"], "unshapedSubnets": ["10.1.0.0/16"]}, "exclude"),
    ({**LIMITS, "unshapedSubnets": ["10.0.0.0/33"]}, "invalid subnet"),
    ({**LIMITS, "unshapedSubnets": "10.0.0.0/8"}, "list"),
    ([1], "object"),
]


def test_bad_input_is_refused_and_leaves_nothing(cni_bin, host_ns, netns, data_dir):
    net = Network(chain(data_dir, subnet6=None), cni_bin, host_ns=host_ns)
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    for limits, words in BAD_INPUT:
        config = {"cniVersion": "1.1.0", "name": net.conflist["name"], "type": "bandwidth", "prevResult": result,
                  "runtimeConfig": {"bandwidth": limits}}
        run = exec_plugin(cni_bin, "bandwidth", "ADD", config, container_id="ctr", netns=kernel.netns_path(pod),
                          ifname="eth0", host_ns=host_ns)
        assert run.code != 0 and run.json["code"] == 7, (limits, run.stdout)
        assert words in run.json["msg"] + run.json.get("details", ""), (limits, run.stdout)
        assert ifbs(host_ns) == [] and set(qdiscs(host_ns, host_veth(result))) <= {"noqueue"}
    # containerd asks for bursts of 2^32 - 1 bits whatever the rate: cut to what the kernel holds
    limits = {"IngressRate": 1_000_000, "IngressBurst": 2**32 - 1, "EgressRate": 1_000_000, "EgressBurst": 2**32 - 1}
    config = {"cniVersion": "1.1.0", "name": net.conflist["name"], "type": "bandwidth", "prevResult": result,
              "runtimeConfig": {"bandwidth": limits}}
    for command in ("ADD", "CHECK"):
        run = exec_plugin(cni_bin, "bandwidth", command, config, container_id="ctr", netns=kernel.netns_path(pod),
                          ifname="eth0", host_ns=host_ns)
        assert run.code == 0, run.stdout
    assert qdiscs(host_ns, host_veth(result))["tbf"]["options"]["rate"] == 125_000
    net.delete("ctr", kernel.netns_path(pod))


def test_failure_after_the_ifb_rolls_back(cni_bin, host_ns, netns, data_dir):
    """The ifb's name is taken by a link of another kind: ADD fails and leaves the veth unshaped."""
    net = Network(chain(data_dir, subnet6=None), cni_bin, host_ns=host_ns)
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod))
    squatter = ifb_name(net.conflist["name"], "ctr", "eth0")
    kernel.sh("ip", "link", "add", squatter, "type", "veth", "peer", "name", "sq-peer", ns=host_ns)
    config = {"cniVersion": "1.1.0", "name": net.conflist["name"], "type": "bandwidth", "prevResult": result,
              "runtimeConfig": {"bandwidth": LIMITS}}
    run = exec_plugin(cni_bin, "bandwidth", "ADD", config, container_id="ctr", netns=kernel.netns_path(pod),
                      ifname="eth0", host_ns=host_ns)
    assert run.code != 0 and "not an ifb" in run.json["msg"], run.stdout
    assert set(qdiscs(host_ns, host_veth(result))) <= {"noqueue"}
    kernel.sh("ip", "link", "del", squatter, ns=host_ns)
    net.delete("ctr", kernel.netns_path(pod))


@pytest.mark.skipif(not reference_available(), reason="reference plugins not installed")
def test_same_qdiscs_and_result_shape_as_reference(cni_bin, host_ns, netns, data_dir, tmp_path):
    seen = []
    for bin_dir in (cni_bin, reference_bin(tmp_path, "bandwidth", ours=cni_bin)):
        net = Network(chain(data_dir, BANDWIDTH, version="1.0.0", subnet6=None), bin_dir, host_ns=host_ns)
        pod = netns("pod")
        result = net.add("ctr", kernel.netns_path(pod), capability_args={"bandwidth": LIMITS})
        [ifb] = ifbs(host_ns)
        veth = qdiscs(host_ns, host_veth(result))
        shaped = {kind: {k: q["options"][k] for k in ("rate", "burst", "lat") if k in q.get("options", {})}
                  for kind, q in veth.items()}
        ifb_q = {kind: {k: q["options"][k] for k in ("rate", "burst", "lat") if k in q.get("options", {})}
                 for kind, q in qdiscs(host_ns, ifb).items()}
        names = [i["name"] == ifb for i in result["interfaces"]]
        net.delete("ctr", kernel.netns_path(pod))
        seen.append((shaped, ifb_q, names, ifbs(host_ns)))
    assert seen[0] == seen[1]
