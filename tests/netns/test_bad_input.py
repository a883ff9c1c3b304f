"""Malformed input: the right error code, a message naming the problem, and nothing left behind."""

import json
import os

import pytest

from tests import kernel
from tests.netns.bridge_helpers import host_links, leases

GOOD = {"cniVersion": "1.0.0", "name": "badnet", "type": "bridge", "bridge": "ppbad0", "isGateway": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.66.0.0/24"}]]}}


def config(**changes):
    conf = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        target, _, leaf = key.rpartition(".")
        node = conf
        for part in filter(None, target.split(".")):
            node = node[part]
        if value is _DROP:
            node.pop(leaf)
        else:
            node[leaf] = value
    return conf


_DROP = object()

# (id, stdin config or raw bytes, env changes, expected code, text the msg or details must contain)
CASES = [
    ("not-json", b"{not json", {}, 6, "not valid JSON"),
    ("not-an-object", b"[1, 2]", {}, 6, "JSON object"),
    ("mtu-wrong-type", config(mtu="1500"), {}, 7, "mtu"),
    ("bool-wrong-type", config(isGateway="yes"), {}, 7, "isGateway"),
    ("unknown-version", config(cniVersion="9.9.9"), {}, 1, "9.9.9"),
    ("missing-version", config(cniVersion=_DROP), {}, 6, "cniVersion"),
    ("missing-containerid", config(), {"CNI_CONTAINERID": None}, 4, "CNI_CONTAINERID"),
    ("missing-ifname", config(), {"CNI_IFNAME": None}, 4, "CNI_IFNAME"),
    ("missing-path", config(), {"CNI_PATH": None}, 4, "CNI_PATH"),
    ("unknown-command", config(), {"CNI_COMMAND": "EXPLODE"}, 4, "EXPLODE"),
    ("bad-containerid", config(), {"CNI_CONTAINERID": "../etc"}, 4, "CNI_CONTAINERID"),
    ("ifname-too-long", config(), {"CNI_IFNAME": "a" * 16}, 4, "CNI_IFNAME"),
    ("invalid-cidr", config(**{"ipam.ranges": [[{"subnet": "10.66.0.0/33"}]]}), {}, 7, "10.66.0.0/33"),
    ("range-start-outside", config(**{"ipam.ranges": [[{"subnet": "10.66.0.0/24", "rangeStart": "10.67.0.5"}]]}),
     {}, 7, "10.67.0.5"),
    ("overlapping-ranges", config(**{"ipam.ranges": [[{"subnet": "10.66.0.0/24"}, {"subnet": "10.66.0.128/25"}]]}),
     {}, 7, "overlap"),
    ("invalid-mac", config(), {"CNI_ARGS": "MAC=zz:00:00:00:00:00"}, 7, "zz:00:00:00:00:00"),
    ("missing-netns", config(), {"CNI_NETNS": "/run/netns/pp-does-not-exist"}, 3, "/run/netns/pp-does-not-exist"),
    ("gateway-without-ipam", config(ipam=_DROP), {}, 7, "isGateway needs ipam"),
    ("hairpin-and-promisc", config(hairpinMode=True, promiscMode=True), {}, 7, "hairpinMode and promiscMode"),
    ("unknown-ipam", config(**{"ipam.type": "no-such-ipam"}), {}, 7, "no-such-ipam"),
    ("bad-network-name", config(name="bad/name"), {}, 7, "bad/name"),
    ("containerid-trailing-newline", config(), {"CNI_CONTAINERID": "ctr\n"}, 4, "CNI_CONTAINERID"),
    ("network-name-trailing-newline", config(name="badnet\n"), {}, 7, "badnet"),
    ("ipam-type-trailing-newline", config(**{"ipam.type": "host-local\n"}), {}, 7, "host-local"),
    ("args-cni-not-object", config(args={"cni": "x"}), {}, 7, "args.cni"),
    ("dns-a-string", config(dns="8.8.8.8"), {}, 7, "'dns' must be an object"),
    ("dns-nameservers-a-string", config(dns={"nameservers": "8.8.8.8"}), {}, 7, "dns.nameservers"),
    ("nested-too-deep", b"[" * 100000 + b"]" * 100000, {}, 6, "nested too deeply"),
    ("config-too-large", b'{"cniVersion": "1.0.0", "pad": "' + b"a" * (5 << 20) + b'"}', {}, 6, "too large"),
    ("resolvconf-device", config(**{"ipam.resolvConf": "/dev/zero"}), {}, 5, "not a regular file"),
    ("too-many-range-sets", config(**{"ipam.ranges": [[{"subnet": f"10.{i}.0.0/24"}] for i in range(65)]}),
     {}, 7, "too many"),
    ("too-many-routes", config(**{"ipam.routes": [{"dst": f"10.{i // 256}.{i % 256}.0/24"} for i in range(1025)]}),
     {}, 7, "too many"),
]


def _env(pod, changes):
    """The CNI variables of an ADD; a change to None drops that variable."""
    return {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr", "CNI_NETNS": kernel.netns_path(pod),
            "CNI_IFNAME": "eth0", **changes}


def _run_add(plugin_host, stdin, env, data_dir):
    if isinstance(stdin, dict):
        stdin = json.loads(json.dumps(stdin))
        if isinstance(stdin.get("ipam"), dict):
            stdin["ipam"]["dataDir"] = data_dir
        stdin = json.dumps(stdin).encode()
    env = dict(env)
    return plugin_host.exec("bridge", env.pop("CNI_COMMAND", ""), stdin,
                            container_id=env.pop("CNI_CONTAINERID", ""), netns=env.pop("CNI_NETNS", ""),
                            ifname=env.pop("CNI_IFNAME", ""), cni_args=env.pop("CNI_ARGS", ""),
                            path=[] if env.pop("CNI_PATH", True) is None else None, env=env)


def assert_clean_error(run, code, text):
    assert run.code != 0
    assert b"Traceback" not in run.stdout
    error = json.loads(run.stdout)
    assert set(error) >= {"cniVersion", "code", "msg"}
    assert error["code"] == code, error
    assert text in error["msg"] + " " + error.get("details", ""), error


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(plugin_host, netns, data_dir, case):
    _, stdin, env_changes, code, text = case
    pod = netns("pod")
    before = host_links(plugin_host.ns)
    run = _run_add(plugin_host, stdin, _env(pod, env_changes), data_dir)
    assert_clean_error(run, code, text)
    assert host_links(plugin_host.ns) == before
    assert host_links(pod) == ["lo"]
    assert leases(data_dir, "badnet") == []


def test_own_namespace_is_refused_before_anything(plugin_host, data_dir):
    before = host_links(plugin_host.ns)
    run = _run_add(plugin_host, config(), _env(plugin_host.ns, {"CNI_NETNS": kernel.netns_path(plugin_host.ns)}),
                   data_dir)
    assert_clean_error(run, 4, "own network namespace")
    assert host_links(plugin_host.ns) == before
    assert leases(data_dir, "badnet") == []


def test_bridge_name_taken_by_another_kind_of_link(plugin_host, netns, data_dir):
    kernel.sh("ip", "link", "add", "ppbad0", "type", "veth", "peer", "name", "ppbad1", ns=plugin_host.ns)
    pod = netns("pod")
    before = host_links(plugin_host.ns)
    run = _run_add(plugin_host, config(), _env(pod, {}), data_dir)
    assert_clean_error(run, 103, "not a bridge")
    assert host_links(plugin_host.ns) == before
    assert host_links(pod) == ["lo"]
    assert os.listdir(data_dir) == [], "the bridge is refused before IPAM touches the lease directory"


def test_bridge_named_lo_leaves_the_lease_directory_untouched(plugin_host, netns, data_dir):
    pod = netns("pod")
    run = _run_add(plugin_host, config(bridge="lo"), _env(pod, {}), data_dir)
    assert_clean_error(run, 103, "not a bridge")
    assert host_links(pod) == ["lo"]
    assert os.listdir(data_dir) == []


def test_relative_data_dir_is_refused(plugin_host, netns, tmp_path):
    pod = netns("pod")
    conf = config(**{"ipam.dataDir": "leases"})
    run = plugin_host.exec("bridge", "ADD", json.dumps(conf).encode(), container_id="ctr",
                           netns=kernel.netns_path(pod), ifname="eth0")
    assert_clean_error(run, 7, "not an absolute path")
    assert host_links(pod) == ["lo"]


def test_exhausted_pool(plugin_host, netns, data_dir):
    conf = config(**{"ipam.ranges": [[{"subnet": "10.66.0.0/24", "rangeStart": "10.66.0.10",
                                       "rangeEnd": "10.66.0.10"}]]})
    first = netns("pod")
    run = _run_add(plugin_host, conf, _env(first, {"CNI_CONTAINERID": "first"}), data_dir)
    assert run.code == 0, run
    second = netns("pod")
    before = host_links(plugin_host.ns)
    run = _run_add(plugin_host, conf, _env(second, {"CNI_CONTAINERID": "second"}), data_dir)
    assert_clean_error(run, 101, "10.66.0")
    assert host_links(plugin_host.ns) == before
    assert host_links(second) == ["lo"]
    assert leases(data_dir, "badnet") == ["10.66.0.10"]
    run = _run_add(plugin_host, conf, _env(first, {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "first"}), data_dir)
    assert run.code == 0


def test_resolvconf_fifo_is_refused_without_blocking(plugin_host, netns, data_dir, tmp_path):
    fifo = tmp_path / "resolv.fifo"
    os.mkfifo(fifo)
    pod = netns("pod")
    run = _run_add(plugin_host, config(**{"ipam.resolvConf": str(fifo)}), _env(pod, {}), data_dir)
    assert_clean_error(run, 5, "not a regular file")
    assert host_links(pod) == ["lo"]
    assert leases(data_dir, "badnet") == []


MALFORMED_PREV_RESULTS = ["x", 5, {"interfaces": "abc"}, {"ips": [1]}, {"ips": [{"address": "nope"}]},
                          {"cniVersion": "0.1.0"}, {"interfaces": [{"name": 5}, {"name": ["x"]}]},
                          {"routes": [{"dst": 7}]}]


@pytest.mark.parametrize("prev", MALFORMED_PREV_RESULTS, ids=[json.dumps(p)[:24] for p in MALFORMED_PREV_RESULTS])
def test_delete_ignores_a_malformed_prev_result(plugin_host, netns, data_dir, prev):
    pod = netns("pod")
    before = host_links(plugin_host.ns)
    run = _run_add(plugin_host, config(), _env(pod, {}), data_dir)
    assert run.code == 0, run
    assert leases(data_dir, "badnet") != []
    run = _run_add(plugin_host, config(prevResult=prev), _env(pod, {"CNI_COMMAND": "DEL"}), data_dir)
    assert run.code == 0, run
    assert leases(data_dir, "badnet") == []
    assert host_links(pod) == ["lo"]
    assert sorted(set(host_links(plugin_host.ns)) - {"ppbad0"}) == before
