"""Configs and checks shared by the bridge tests."""

import os

from plugins.host_local import lease_index
from tests import kernel

VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def bridge_conflist(data_dir, version="1.1.0", subnet4="10.77.0.0/24", subnet6="fd77::/64", bridge=None,
                    extra_plugins=(), ipam_extra=None, **bridge_keys):
    ranges = []
    if subnet4:
        ranges.append([{"subnet": subnet4}])
    if subnet6:
        ranges.append([{"subnet": subnet6}])
    plugin = {"type": "bridge", "bridge": bridge or kernel.unique("ppbr"), "isGateway": True,
              "isDefaultGateway": True,
              "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": ranges, **(ipam_extra or {})}}
    plugin.update(bridge_keys)
    return {"cniVersion": version, "name": kernel.unique("net-", 12), "plugins": [plugin, *extra_plugins]}


def pod_addresses(result):
    """{4: '10.77.0.2', 6: 'fd77::2'} from an ADD result."""
    out = {}
    for ip in result["ips"]:
        address = ip["address"].split("/")[0]
        out[6 if ":" in address else 4] = address
    return out


def leases(data_dir, network):
    path = os.path.join(data_dir, network)
    if not os.path.isdir(path):
        return []
    return sorted(f for f in os.listdir(path) if f not in ("lock", lease_index.NAME) and not f.startswith("last_reserved_ip"))


def host_links(ns):
    return sorted(l["ifname"] for l in kernel.ip_json("link", "show", ns=ns))


def add_pods(net, netns, count=2):
    """`count` pods, each in a namespace of its own, added to `net` as ctr0, ctr1, ...: (namespaces, results)."""
    pods = [netns("pod") for _ in range(count)]
    return pods, [net.add(f"ctr{i}", kernel.netns_path(p)) for i, p in enumerate(pods)]


def check_then_delete_twice(net, pods, version):
    """CHECK every pod of add_pods (from cniVersion 0.4.0), then DEL each twice: DEL twice is success."""
    if version >= "0.4.0":
        for i, p in enumerate(pods):
            net.check(f"ctr{i}", kernel.netns_path(p))
    for i, p in enumerate(pods):
        net.delete(f"ctr{i}", kernel.netns_path(p))
        net.delete(f"ctr{i}", kernel.netns_path(p))
