"""The same configs through the reference Go plugins and through ours: results field by field
(generated interface names and MACs aside) and the lease files they leave, byte for byte."""

import json
import os

import pytest

from plugins.host_local import lease_index
from podplumb.runtime import Network
from tests import kernel
from tests.conftest import REFERENCE_BIN, reference_available

pytestmark = pytest.mark.skipif(not reference_available(), reason="containernetworking-plugins not installed")

REFERENCE_VERSIONS = ("0.3.1", "0.4.0", "1.0.0")   # Debian's reference plugins stop at 1.0.0

IPAMS = {
    "dual-stack": {"ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]]},
    "range-and-routes": {"ranges": [[{"subnet": "10.88.0.0/24", "rangeStart": "10.88.0.100", "rangeEnd": "10.88.0.110",
                                      "gateway": "10.88.0.254"}]],
                         "routes": [{"dst": "10.200.0.0/16"}, {"dst": "10.201.0.0/16", "gw": "10.88.0.254"}]},
    "legacy-subnet": {"subnet": "10.88.0.0/24", "gateway": "10.88.0.1"},
}
BRIDGES = {
    "gateway": {"isGateway": True},
    "default-gateway": {"isDefaultGateway": True, "mtu": 1400, "hairpinMode": True},
    "plain": {},
}


def _normalised(result):
    result = json.loads(json.dumps(result))
    for i, iface in enumerate(result.get("interfaces", [])):
        iface.pop("mac", None)
        if i == 1:
            iface.pop("name")   # the host-side veth name is random on both sides
        if "sandbox" in iface:
            iface["sandbox"] = "<netns>"
    return result


def _lease_files(data_dir):
    out = {}
    for root, _, files in os.walk(data_dir):
        for name in files:
            if name in ("lock", lease_index.NAME):   # the index: ours only, a cache of the leases
                continue
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), data_dir)] = f.read()
    return out


def _run(bin_dir, host_ns, pods, conflist, check):
    net = Network(conflist, bin_dir, host_ns=host_ns, path=[str(bin_dir)])
    results = [net.add(f"ctr{i}", kernel.netns_path(p), cni_args="IgnoreUnknown=1") for i, p in enumerate(pods)]
    if check and conflist["cniVersion"] >= "0.4.0":
        for i, p in enumerate(pods):
            net.check(f"ctr{i}", kernel.netns_path(p))
    return net, results


@pytest.mark.parametrize("version", REFERENCE_VERSIONS)
@pytest.mark.parametrize("ipam", IPAMS, ids=list(IPAMS))
@pytest.mark.parametrize("bridge", BRIDGES, ids=list(BRIDGES))
def test_same_results_and_leases_as_reference(cni_bin, netns, tmp_path, version, ipam, bridge):
    outcomes = []
    for side, bin_dir in (("reference", REFERENCE_BIN), ("ours", cni_bin)):
        host = netns("pphost")
        pods = [netns("pod"), netns("pod")]
        data_dir = tmp_path / side
        conflist = {"cniVersion": version, "name": "diffnet", "plugins": [
            {"type": "bridge", "bridge": "ppdiff0", **BRIDGES[bridge],
             "ipam": {"type": "host-local", "dataDir": str(data_dir), **IPAMS[ipam]}}]}
        # The reference's CHECK is not run: it fails whenever the bridge's MAC changed after its
        # first port joined (it compares with the MAC it reported before), so it is not a baseline.
        net, results = _run(bin_dir, host, pods, conflist, check=side == "ours")
        leases_after_add = _lease_files(data_dir)
        pod_link = kernel.ip_json("link", "show", "eth0", ns=pods[0])[0]
        net.delete("ctr0", kernel.netns_path(pods[0]))
        outcomes.append({"results": [_normalised(r) for r in results], "leases": leases_after_add,
                         "leases_after_del": _lease_files(data_dir), "pod_mtu": pod_link["mtu"]})
        net.delete("ctr1", kernel.netns_path(pods[1]))
    reference, ours = outcomes
    assert ours["results"] == reference["results"]
    assert ours["leases"] == reference["leases"]
    assert ours["leases_after_del"] == reference["leases_after_del"]
    assert ours["pod_mtu"] == reference["pod_mtu"]


def test_leases_survive_a_switch_between_reference_and_ours(cni_bin, netns, tmp_path):
    """A node can move from the reference plugins to ours and back without losing or reusing a lease."""
    host = netns("pphost")
    conflist = {"cniVersion": "1.0.0", "name": "switchnet", "plugins": [
        {"type": "bridge", "bridge": "ppsw0", "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": "10.89.0.0/24"}]]}}]}
    reference = Network(conflist, REFERENCE_BIN, host_ns=host, path=[REFERENCE_BIN])
    ours = Network(conflist, cni_bin, host_ns=host, path=[str(cni_bin)])
    pods = [netns("pod") for _ in range(4)]
    a = reference.add("a", kernel.netns_path(pods[0]))
    b = ours.add("b", kernel.netns_path(pods[1]))
    c = reference.add("c", kernel.netns_path(pods[2]))
    addresses = [r["ips"][0]["address"] for r in (a, b, c)]
    assert addresses == ["10.89.0.2/24", "10.89.0.3/24", "10.89.0.4/24"]
    ours.delete("a", kernel.netns_path(pods[0]), use_cache=False)     # ours releases the reference's lease
    reference.delete("b", kernel.netns_path(pods[1]), use_cache=False)  # and the other way round
    d = ours.add("d", kernel.netns_path(pods[3]))
    assert d["ips"][0]["address"] == "10.89.0.5/24"   # round-robin continues past the last reserved
    assert sorted(f for f in os.listdir(tmp_path / "switchnet") if f[0].isdigit()) == ["10.89.0.4", "10.89.0.5"]
    for net, cid, pod in ((reference, "c", pods[2]), (ours, "d", pods[3])):
        net.delete(cid, kernel.netns_path(pod))
