"""Every example config in conf/cni works as shipped: ADD, CHECK and DEL, with only dataDir and
bridge name made unique for the test, and a macvlan master or host device cabled to a LAN namespace."""

import glob
import json
import os

import pytest

from tests import kernel
from tests.netns.bridge_helpers import leases
from tests.netns.lan_helpers import make_lan

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "conf", "cni", "*.conf*")))


def _as_conflist(path, data_dir, lan_master):
    with open(path) as f:
        conf = json.load(f)
    if "plugins" not in conf:   # a single .conf, as libcni wraps it
        conf = {"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": [conf]}
    for plugin in conf["plugins"]:
        if "bridge" in plugin:
            plugin["bridge"] = kernel.unique("ppex")
        if "ipam" in plugin:
            plugin["ipam"]["dataDir"] = data_dir
        if plugin.get("type") == "tuning":     # its originals, kept under /run/podplumb on a node
            plugin["dataDir"] = os.path.join(data_dir, "tuning")
        for key in ("master", "device"):   # the machine's own links in a real config: a LAN of the test's here
            if key in plugin:
                plugin[key] = lan_master()
    return conf


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(c) for c in CONFIGS])
def test_example_config(plugin_host, netns, data_dir, path):
    conflist = _as_conflist(path, data_dir, lambda: make_lan(netns, plugin_host.ns).master)
    missing = [p["type"] for p in conflist["plugins"] if not os.path.exists(os.path.join(plugin_host.bin_dir, p["type"]))]
    assert not missing, f"example {path} uses plugins podplumb does not install: {missing}"
    net = plugin_host.network(conflist)
    pod = netns("pod")
    result = net.add("ctr", kernel.netns_path(pod), capability_args={"portMappings": [
        {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 10**8, "ingressBurst": 10**6, "egressRate": 10**8, "egressBurst": 10**6}})
    assert result["ips"]
    net.check("ctr", kernel.netns_path(pod))
    net.delete("ctr", kernel.netns_path(pod))
    assert leases(data_dir, conflist["name"]) == []
