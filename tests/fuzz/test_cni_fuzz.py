"""Malformed configs and environments fed to the installed executables, a bounded number of cases
from a fixed seed (PODPLUMB_FUZZ_SEED / PODPLUMB_FUZZ_CASES change them).

Each case: the answer is success or a spec error object (never code 100, never a traceback on
stdout), and afterwards nothing is left: no link on the host or in the pod, no lease, no nftables
table, no file outside the test's own directories.
"""

import copy
import json
import os
import random


from plugins.host_local import lease_index
from tests import kernel
from tests.conftest import PluginHost
from tests.netns.bridge_helpers import host_links

SEED = int(os.environ.get("PODPLUMB_FUZZ_SEED", "20261129"))
CASES = int(os.environ.get("PODPLUMB_FUZZ_CASES", "80"))
GLOBAL_DIRS = ("/var/lib/cni/networks", "/run/podplumb/vxlan")   # where the plugins' defaults point

HOSTILE = [None, "", "x" * 1000, "../../etc/passwd", "ctr\n", -1, 0, 2 ** 64, 1.5, True, [], {}, [[[]]],
           {"cni": "x"}, "10.0.0.0/33", "::/0", "0.0.0.0/0", "/dev/zero", "lo", "eth0\n", ["10.1.0.0/24"],
           [{"subnet": "10.1.0.0/24"}], {"type": "host-local", "subnet": "10.93.0.0/24"}, "\u0000", "1.1.0",
           "9.9.9"]

ENV_HOSTILE = {"CNI_CONTAINERID": ["", "ctr\n", "../x", "x" * 5000, "-x"],
               "CNI_IFNAME": ["", "a" * 16, "eth0/", "..", "eth 0"],
               "CNI_NETNS": ["", "/proc/self/ns/net", "/nonexistent", "/dev/null"],
               "CNI_ARGS": ["garbage", "IP=notanip", "MAC=zz", "=x", "IP=10.0.0.1;IP"],
               "CNI_PATH": ["", "/nonexistent"]}


def _good_configs(data_dir, state_dir, bridge):
    tuning_dir = os.path.join(state_dir, "tuning")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.91.0.5/24", "gateway": "10.91.0.1", "interface": 0}]}
    ipam = {"type": "host-local", "dataDir": data_dir,
            "ranges": [[{"subnet": "10.91.0.0/24"}], [{"subnet": "fd91::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}
    return {
        "bridge": {"cniVersion": "1.0.0", "name": "fuzznet", "type": "bridge", "bridge": bridge,
                   "isGateway": True, "ipMasq": True, "ipam": ipam},
        "vxlan": {"cniVersion": "1.0.0", "name": "fuzzvx", "type": "vxlan", "vni": 4242, "bridge": bridge,
                  "subnet": "10.92.1.0/24", "underlayIP": "10.99.0.1", "stateDir": state_dir,
                  "ipam": {"type": "host-local", "dataDir": data_dir}},
        "portmap": {"cniVersion": "1.0.0", "name": "fuzznet", "type": "portmap",
                    "runtimeConfig": {"portMappings": [{"hostPort": 18081, "containerPort": 80}]},
                    "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
                                   "ips": [{"address": "10.91.0.5/24", "interface": 0}]}},
        "host-local": {"cniVersion": "1.0.0", "name": "fuzznet", "type": "host-local", "ipam": ipam},
        "ptp": {"cniVersion": "1.0.0", "name": "fuzzptp", "type": "ptp", "ipMasq": True, "mtu": 1400,
                "ipam": dict(ipam, ranges=[[{"subnet": "10.94.0.0/24"}]])},
        "macvlan": {"cniVersion": "1.0.0", "name": "fuzzmv", "type": "macvlan", "master": "ppfzu0", "mode": "bridge",
                    "ipam": {"type": "static", "addresses": [{"address": "10.95.0.5/24", "gateway": "10.95.0.1"}]}},
        "loopback": {"cniVersion": "1.0.0", "name": "fuzzlo", "type": "loopback"},
        "tuning": {"cniVersion": "1.0.0", "name": "fuzznet", "type": "tuning", "dataDir": tuning_dir, "mtu": 1400,
                   "sysctl": {"net.ipv4.conf.eth0.arp_ignore": "1"}, "prevResult": prev},
        "sbr": {"cniVersion": "1.0.0", "name": "fuzznet", "type": "sbr", "prevResult": prev},
        "bandwidth": {"cniVersion": "1.0.0", "name": "fuzznet", "type": "bandwidth", "ingressRate": 1000000,
                      "ingressBurst": 100000, "egressRate": 1000000, "egressBurst": 100000, "prevResult": prev},
        "firewall": {"cniVersion": "1.0.0", "name": "fuzznet", "type": "firewall", "ingressPolicy": "same-bridge",
                     "prevResult": prev},
    }


def _paths(node, prefix=()):
    """Every (path to a value) inside a JSON value."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


def _mutate(rng, conf, pinned):
    """`conf` with one value replaced or removed; the `pinned` keys keep every file the call
    may write inside the test's directories."""
    conf = copy.deepcopy(conf)
    path = rng.choice([p for p in _paths(conf) if p and p[-1] not in pinned])
    parent = conf
    for step in path[:-1]:
        parent = parent[step]
    if rng.random() < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(HOSTILE))
    if conf.get("type") == "vxlan":   # vxlan also makes an ipam section when there is none
        conf["stateDir"] = pinned["stateDir"]
        if not isinstance(conf.get("ipam"), dict):
            conf["ipam"] = {"type": "host-local"}
    if isinstance(conf.get("ipam"), dict):
        conf["ipam"]["dataDir"] = pinned["dataDir"]
    return conf


def _case(rng, configs, pinned):
    plugin = rng.choice(sorted(configs))
    conf = configs[plugin]
    env = {}
    roll = rng.random()
    if roll < 0.6:
        stdin = json.dumps(_mutate(rng, conf, pinned)).encode()
    elif roll < 0.8:
        stdin = json.dumps(conf).encode()
        key = rng.choice(sorted(ENV_HOSTILE))
        env[key] = rng.choice(ENV_HOSTILE[key])
    else:
        raw = json.dumps(conf).encode()
        cut = rng.randrange(len(raw))
        stdin = rng.choice([raw[:cut], raw[:cut] + b"\xff\xfe" + raw[cut:], b"", b"null", b"[]", b'"x"'])
    return plugin, stdin, env


def _network_links(ns, before):
    """New bridges and VTEPs: a network's own links, which outlive its last pod by design."""
    links = kernel.ip_json("-d", "link", "show", ns=ns)
    return {link["ifname"] for link in links if link["ifname"] not in before
            and link.get("linkinfo", {}).get("info_kind") in ("bridge", "vxlan")}


def _global_state():
    return {d: sorted(os.listdir(d)) if os.path.isdir(d) else None for d in GLOBAL_DIRS}


def _files_under(path):
    return sorted(os.path.relpath(os.path.join(root, f), path) for root, _, files in os.walk(path) for f in files)


def test_malformed_input_is_answered_cleanly_and_leaves_nothing(cni_bin, host_ns, netns, tmp_path):
    rng = random.Random(SEED)
    data_dir, state_dir = tmp_path / "ipam", tmp_path / "state"
    data_dir.mkdir()
    state_dir.mkdir()
    bridge = kernel.unique("ppfz")
    configs = _good_configs(str(data_dir), str(state_dir), bridge)
    host = PluginHost(cni_bin, host_ns)
    kernel.sh("ip", "link", "add", "ppfzu0", "type", "veth", "peer", "name", "ppfzu1", ns=host_ns)
    kernel.sh("ip", "addr", "add", "10.99.0.1/24", "dev", "ppfzu0", ns=host_ns)
    kernel.sh("ip", "link", "set", "ppfzu0", "up", ns=host_ns)
    shared = {bridge, "ppvx.4242"}    # a network's bridge and VTEP stay after its last pod
    links_before, global_before = host_links(host_ns), _global_state()
    failures = []
    for i in range(CASES):
        plugin, stdin, env = _case(rng, configs, {"dataDir": str(data_dir), "stateDir": str(state_dir)})
        pod = netns("fz")
        call = {"CNI_CONTAINERID": f"fuzz{i}", "CNI_NETNS": kernel.netns_path(pod), "CNI_IFNAME": "eth0",
                "CNI_ARGS": "", "CNI_PATH": str(cni_bin)}
        call.update(env)
        run = host.exec(plugin, "ADD", stdin, container_id=call["CNI_CONTAINERID"], netns=call["CNI_NETNS"],
                        ifname=call["CNI_IFNAME"], cni_args=call["CNI_ARGS"],
                        path=[p for p in call["CNI_PATH"].split(":") if p])
        label = f"case {i} {plugin} env={env} stdin={stdin[:300]!r}"
        if b"Traceback" in run.stdout:
            failures.append(f"{label}: traceback on stdout")
        elif run.code != 0:
            try:
                error = json.loads(run.stdout)
            except ValueError:
                error = None
            if not isinstance(error, dict) or not {"cniVersion", "code", "msg"} <= set(error):
                failures.append(f"{label}: not a spec error object: {run.stdout[:300]!r}")
            elif error["code"] == 100:
                failures.append(f"{label}: internal error {error}")
        else:   # the mutation was still a valid config: DEL must undo it
            done = host.exec(plugin, "DEL", stdin, container_id=call["CNI_CONTAINERID"], netns=call["CNI_NETNS"],
                             ifname=call["CNI_IFNAME"], path=[str(cni_bin)])
            if done.code != 0:
                failures.append(f"{label}: ADD succeeded, DEL failed: {done.stdout[:300]!r}")
            shared |= _network_links(host_ns, links_before)
        kernel.del_netns(pod)
        leftovers = [f for f in _files_under(data_dir) if not f.endswith(("/lock", "/" + lease_index.NAME))
                     and "/last_reserved_ip." not in f]
        if sorted(set(host_links(host_ns)) - shared) != links_before or leftovers:
            failures.append(f"{label}: left links {host_links(host_ns)} / leases {leftovers}")
            break
    ruleset = kernel.sh("nft", "list", "ruleset", ns=host_ns).stdout
    assert failures == [], "\n".join(failures)
    # no pod's chain or map element is left (the tables themselves stay empty until a GC)
    assert "chain pp-" not in ruleset and "jump pp-" not in ruleset, ruleset
    assert _global_state() == global_before
