"""The same macvlan configs through the reference plugin and ours: results (MACs aside) and the pod's
link as the kernel shows it."""

import json

import pytest

from podplumb.runtime import Network
from tests import kernel
from tests.conftest import REFERENCE_BIN, reference_available
from tests.netns.lan_helpers import make_lan

pytestmark = pytest.mark.skipif(not reference_available(), reason="containernetworking-plugins not installed")

VERSIONS = ("0.3.1", "0.4.0", "1.0.0")     # Debian's reference plugins stop at 1.0.0
CONFIGS = {
    "bridge-host-local": {"mode": "bridge", "ipam": {"type": "host-local", "ranges": [
        [{"subnet": "10.55.0.0/24", "rangeStart": "10.55.0.20", "gateway": "10.55.0.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}]}},
    "private-mtu": {"mode": "private", "mtu": 1280, "ipam": {"type": "host-local", "subnet": "10.55.0.0/24"}},
    "vepa-layer2": {"mode": "vepa"},
    "mac-from-config": {"mac": "0a:55:00:00:00:09", "ipam": {"type": "host-local", "subnet": "10.55.0.0/24"}},
}


def _pod_view(pod):
    link = kernel.ip_json("-d", "link", "show", "eth0", ns=pod)[0]
    addresses = sorted(f"{a['local']}/{a['prefixlen']}" for entry in kernel.ip_json("-4", "addr", "show", "eth0", ns=pod)
                       for a in entry["addr_info"])
    routes = sorted(json.dumps({k: r.get(k) for k in ("dst", "gateway")}) for r in kernel.ip_json("-4", "route", ns=pod))
    return {"mode": link["linkinfo"]["info_data"]["mode"], "mtu": link["mtu"], "up": "UP" in link["flags"],
            "addresses": addresses, "routes": routes}


def _normalised(result, keep_mac):
    result = json.loads(json.dumps(result))
    for iface in result.get("interfaces", []):
        if not keep_mac:
            iface.pop("mac", None)
        iface["sandbox"] = "<netns>"
    return result


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", CONFIGS, ids=list(CONFIGS))
def test_same_results_and_links_as_reference(cni_bin, netns, tmp_path, version, name):
    outcomes = []
    for side, bin_dir in (("reference", REFERENCE_BIN), ("ours", cni_bin)):
        host = netns("pphost")
        lan = make_lan(netns, host)
        pod = netns("pod")
        plugin = {"type": "macvlan", "master": lan.master, **json.loads(json.dumps(CONFIGS[name]))}
        if "ipam" in plugin:
            plugin["ipam"]["dataDir"] = str(tmp_path / side)
        net = Network({"cniVersion": version, "name": "mvdiff", "plugins": [plugin]}, bin_dir, host_ns=host,
                      path=[str(bin_dir)])
        result = net.add("ctr", kernel.netns_path(pod), cni_args="IgnoreUnknown=1")
        if version >= "0.4.0":
            net.check("ctr", kernel.netns_path(pod))
        view = _pod_view(pod)
        net.delete("ctr", kernel.netns_path(pod))
        outcomes.append({"result": _normalised(result, keep_mac="mac" in plugin), "pod": view,
                         "after_del": kernel.ip_json("link", "show", ns=pod)[-1]["ifname"]})
    reference, ours = outcomes
    assert ours == reference
