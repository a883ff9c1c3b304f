"""host-local through the dispatcher, as a plain function: every config key, version and command."""

import json
import os
import subprocess
import sys

import pytest

from cni import skel
from cni.errors import CHECK_FAILED
from cni.version import SUPPORTED
from plugins.host_local import lease_index
from plugins.host_local.plugin import PLUGIN
from plugins.host_local.store import Store
from tests import kernel

# ---- helpers shared by the other test_host_local* modules ----


def network(data_dir, ipam=None, version="1.1.0", name="testnet", **extra) -> dict:
    ipam = {"subnet": "10.1.0.0/24"} if ipam is None else ipam
    return {"cniVersion": version, "name": name, "ipam": {"type": "host-local", "dataDir": data_dir, **ipam},
            **extra}


def call(command, conf, netns="", container_id="c1", ifname="eth0", cni_args=""):
    """(parsed stdout, CNI error code or 0) of one call."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname,
           "CNI_PATH": "/nonexistent", "CNI_ARGS": cni_args}
    if netns:
        env["CNI_NETNS"] = netns
    out, status = skel.run(PLUGIN, env, json.dumps(conf).encode())
    parsed = json.loads(out) if out.strip() else None
    return parsed, (parsed["code"] if status else 0)


def add(conf, netns, container_id="c1", ifname="eth0", cni_args="") -> dict:
    out, code = call("ADD", conf, netns, container_id, ifname, cni_args)
    assert code == 0, out
    return out


def delete(conf, container_id="c1", ifname="eth0"):
    out, code = call("DEL", conf, "", container_id, ifname)
    assert (out, code) == (None, 0), out


def addresses(result) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


def files(data_dir, name="testnet") -> dict[str, bytes]:
    """Every file of the network's lease directory, by name, but the lease index (a cache of them)."""
    directory = os.path.join(data_dir, name)
    if not os.path.isdir(directory):
        return {}
    out = {}
    for entry in sorted(os.listdir(directory)):
        if entry == lease_index.NAME:
            continue
        with open(os.path.join(directory, entry), "rb") as f:
            out[entry] = f.read()
    return out


def leases(data_dir, name="testnet") -> dict[str, bytes]:
    return {k: v for k, v in files(data_dir, name).items() if k != "lock" and not k.startswith("last_reserved_ip")}


def current_index(data_dir, name="testnet") -> dict | None:
    """The leases the network's lease index records, None when it is missing, torn or not written
    for the directory as it is now."""
    directory = os.path.join(data_dir, name)
    try:
        with open(os.path.join(directory, lease_index.NAME), "rb") as f:
            return lease_index.parse(f.read(), lease_index.state(directory))
    except FileNotFoundError:
        return None


def scans(monkeypatch) -> list:
    """The lease directories the store reads lease by lease from now on (rather than its index)."""
    scanned = []
    real = Store._scan
    monkeypatch.setattr(Store, "_scan", lambda store: scanned.append(store.path) or real(store))
    return scanned


# ---- ADD in every version and shape ----

@pytest.mark.parametrize("version", SUPPORTED)
def test_add_ipv4_defaults_every_version(version, data_dir, netns_path):
    conf = network(data_dir, version=version)
    out = add(conf, netns_path)
    ip = {"address": "10.1.0.2/24", "gateway": "10.1.0.1"}
    if version in ("0.3.0", "0.3.1", "0.4.0"):
        ip = {"version": "4", **ip}
    assert out == {"cniVersion": version, "ips": [ip], "dns": {}}
    assert files(data_dir) == {"10.1.0.2": b"c1\r\neth0", "last_reserved_ip.0": b"10.1.0.2", "lock": b""}
    delete(conf)
    assert leases(data_dir) == {}


def test_add_ipv6(data_dir, netns_path):
    out = add(network(data_dir, {"ranges": [[{"subnet": "fd00:1::/64"}]]}), netns_path)
    assert out["ips"] == [{"address": "fd00:1::2/64", "gateway": "fd00:1::1"}]
    assert leases(data_dir) == {"fd00:1::2": b"c1\r\neth0"}


def test_ipv6_hands_out_the_last_address_but_ipv4_not_the_broadcast(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/30"}], [{"subnet": "fd00::/126"}]]})
    assert addresses(add(conf, netns_path, "c1")) == ["10.1.0.2/30", "fd00::2/126"]
    out, code = call("ADD", conf, netns_path, "c2")
    assert code == 101 and "range set 0" in out["msg"] and "10.1.0.1-10.1.0.2" in out["msg"]
    v6 = network(data_dir, {"ranges": [[{"subnet": "fd00::/126"}]]}, name="v6")
    assert addresses(add(v6, netns_path, "c2")) == ["fd00::2/126"]
    assert addresses(add(v6, netns_path, "c3")) == ["fd00::3/126"]


def test_dual_stack_one_address_per_range_set(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64", "gateway": "fd00::fe"}]]})
    out = add(conf, netns_path)
    assert out["ips"] == [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"},
                          {"address": "fd00::1/64", "gateway": "fd00::fe"}]
    assert files(data_dir)["last_reserved_ip.1"] == b"fd00::1"


def test_legacy_single_range_with_every_key(data_dir, netns_path):
    conf = network(data_dir, {"subnet": "10.9.0.0/16", "rangeStart": "10.9.1.10", "rangeEnd": "10.9.1.11",
                              "gateway": "10.9.0.254"})
    assert add(conf, netns_path, "c1")["ips"] == [{"address": "10.9.1.10/16", "gateway": "10.9.0.254"}]
    assert addresses(add(conf, netns_path, "c2")) == ["10.9.1.11/16"]
    out, code = call("ADD", conf, netns_path, "c3")
    assert code == 101 and "10.9.1.10-10.9.1.11" in out["msg"]


def test_legacy_range_comes_before_ranges(data_dir, netns_path):
    conf = network(data_dir, {"subnet": "10.1.0.0/24", "ranges": [[{"subnet": "fd00::/64"}]]})
    assert addresses(add(conf, netns_path)) == ["10.1.0.2/24", "fd00::2/64"]


def test_runtime_ip_ranges_come_first(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "fd00::/64"}]]},
                   runtimeConfig={"ipRanges": [[{"subnet": "10.5.0.0/24", "rangeStart": "10.5.0.50"}]]})
    assert addresses(add(conf, netns_path)) == ["10.5.0.50/24", "fd00::2/64"]
    assert files(data_dir)["last_reserved_ip.0"] == b"10.5.0.50"


def test_routes_and_resolv_conf(data_dir, netns_path, tmp_path):
    resolv = os.path.join(data_dir, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("# comment\n; other comment\nnameserver 10.0.0.53\nnameserver fd00::53\n"
                "domain example.test\nsearch a.test b.test\noptions ndots:2 edns0\nbogus line\n")
    conf = network(data_dir, {"subnet": "10.1.0.0/24", "resolvConf": resolv,
                              "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.2.3.4/8", "gw": "10.1.0.9"},
                                         {"dst": "192.168.0.0/16", "mtu": 1400, "priority": 7}]})
    out = add(conf, netns_path)
    assert out["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "10.2.3.4/8", "gw": "10.1.0.9"},
                             {"dst": "192.168.0.0/16", "mtu": 1400, "priority": 7}]
    assert out["dns"] == {"nameservers": ["10.0.0.53", "fd00::53"], "domain": "example.test",
                          "search": ["a.test", "b.test"], "options": ["ndots:2", "edns0"]}
    old = add(dict(conf, cniVersion="1.0.0"), netns_path, "c2")
    assert old["routes"][2] == {"dst": "192.168.0.0/16"}   # 1.1.0 route fields are dropped for 1.0.0


def test_missing_resolv_conf_is_an_io_failure_and_reserves_nothing(data_dir, netns_path):
    out, code = call("ADD", network(data_dir, {"subnet": "10.1.0.0/24", "resolvConf": "/nonexistent/resolv"}),
                     netns_path)
    assert code == 5 and "/nonexistent/resolv" in out["msg"]
    assert os.listdir(data_dir) == []


# ---- round-robin, gateway skipping, exhaustion ----

def test_round_robin_continues_after_last_reserved(data_dir, netns_path):
    conf = network(data_dir, {"subnet": "10.1.0.0/29", "gateway": "10.1.0.3"})   # hosts .1-.6, gateway .3
    got = [addresses(add(conf, netns_path, f"c{i}"))[0] for i in range(1, 4)]
    assert got == ["10.1.0.1/29", "10.1.0.2/29", "10.1.0.4/29"]
    delete(conf, "c1")
    assert addresses(add(conf, netns_path, "c4")) == ["10.1.0.5/29"]   # not the freed .1
    assert addresses(add(conf, netns_path, "c5")) == ["10.1.0.6/29"]
    assert addresses(add(conf, netns_path, "c6")) == ["10.1.0.1/29"]   # wraps round
    out, code = call("ADD", conf, netns_path, "c7")
    assert code == 101
    assert out["msg"] == "no free address in range set 0 (10.1.0.1-10.1.0.6)"
    assert "5 addresses" in out["details"]
    assert "c7" not in b"".join(leases(data_dir).values()).decode()


def test_range_set_with_several_ranges_moves_on_to_the_next(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.5"},
                                          {"subnet": "10.2.0.0/30"}]]})
    got = [addresses(add(conf, netns_path, f"c{i}"))[0] for i in range(3)]
    assert got == ["10.1.0.5/29", "10.1.0.6/29", "10.2.0.2/30"]
    out, code = call("ADD", conf, netns_path, "c9")
    assert code == 101 and "10.1.0.5-10.1.0.6,10.2.0.1-10.2.0.2" in out["msg"]
    delete(conf, "c0")
    assert addresses(add(conf, netns_path, "c9")) == ["10.1.0.5/29"]


def test_last_reserved_outside_the_ranges_starts_over(data_dir, netns_path):
    conf = network(data_dir, {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100"})
    os.makedirs(os.path.join(data_dir, "testnet"))
    with open(os.path.join(data_dir, "testnet", "last_reserved_ip.0"), "w") as f:
        f.write("10.1.0.5")
    assert addresses(add(conf, netns_path)) == ["10.1.0.100/24"]


def test_network_address_is_never_handed_out(data_dir, netns_path):
    conf = network(data_dir, {"subnet": "10.1.0.0/30", "rangeStart": "10.1.0.0", "rangeEnd": "10.1.0.3",
                              "gateway": "10.1.0.2"})
    assert addresses(add(conf, netns_path, "c1")) == ["10.1.0.1/30"]
    assert call("ADD", conf, netns_path, "c2")[1] == 101


# ---- requested addresses ----

@pytest.mark.parametrize("how", ["runtimeConfig", "args", "CNI_ARGS"])
def test_requested_addresses_three_ways(how, data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]})
    wanted = ["10.1.0.77", "fd00::77/64"]   # a prefix length is accepted and ignored
    cni_args = ""
    if how == "runtimeConfig":
        conf["runtimeConfig"] = {"ips": wanted}
    elif how == "args":
        conf["args"] = {"cni": {"ips": wanted}}
    else:
        cni_args = "IgnoreUnknown=1;K8S_POD_NAME=x;IP=" + ",".join(wanted)
    out = add(conf, netns_path, cni_args=cni_args)
    assert addresses(out) == ["10.1.0.77/24", "fd00::77/64"]
    assert files(data_dir)["last_reserved_ip.0"] == b"10.1.0.77"


def test_requested_only_for_one_range_set(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]},
                   runtimeConfig={"ips": ["fd00::99"]})
    assert addresses(add(conf, netns_path)) == ["10.1.0.2/24", "fd00::99/64"]


@pytest.mark.parametrize("wanted, code, words", [
    (["10.1.0.50"], 102, ["10.1.0.50", "already held by container c0 (ifname eth0)"]),
    (["10.9.9.9"], 102, ["10.9.9.9", "outside every range"]),
    (["10.1.0.1"], 102, ["10.1.0.1", "gateway"]),
    (["10.1.0.0"], 102, ["10.1.0.0", "outside every range"]),
    (["10.1.0.7", "10.1.0.8"], 7, ["10.1.0.7", "10.1.0.8", "range set 0"]),
    (["not-an-ip"], 7, ["not-an-ip"]),
])
def test_requested_address_refused(wanted, code, words, data_dir, netns_path):
    conf = network(data_dir)
    add(dict(conf, runtimeConfig={"ips": ["10.1.0.50"]}), netns_path, "c0")
    before = files(data_dir)
    out, got = call("ADD", dict(conf, runtimeConfig={"ips": wanted}), netns_path, "c1")
    assert got == code, out
    assert all(w in out["msg"] for w in words), out
    assert files(data_dir) == before


def test_requested_in_cni_args_must_be_an_address(data_dir, netns_path):
    out, code = call("ADD", network(data_dir), netns_path, cni_args="IP=10.1.0.300")
    assert code == 4 and "10.1.0.300" in out["msg"]


# ---- idempotent ADD, DEL ----

def test_repeated_add_returns_the_same_addresses(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]})
    first = add(conf, netns_path)
    before = files(data_dir)
    assert add(conf, netns_path) == first
    assert files(data_dir) == before
    assert addresses(add(conf, netns_path, ifname="eth1")) == ["10.1.0.3/24", "fd00::3/64"]
    assert addresses(add(dict(conf, runtimeConfig={"ips": ["10.1.0.2"]}), netns_path)) == addresses(first)
    out, code = call("ADD", dict(conf, runtimeConfig={"ips": ["10.1.0.9"]}), netns_path)
    assert code == 102 and "already holds 10.1.0.2" in out["msg"]


def test_delete_twice_and_without_anything(data_dir):
    conf = network(data_dir)
    delete(conf)                     # no lease directory at all
    assert os.listdir(data_dir) == []
    os.makedirs(os.path.join(data_dir, "testnet"))
    delete(conf)
    delete(conf)


def test_delete_releases_only_that_attachment(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]})
    add(conf, netns_path, "c1", "eth0")
    add(conf, netns_path, "c1", "eth1")
    add(conf, netns_path, "c2", "eth0")
    delete(conf, "c1", "eth0")
    assert leases(data_dir) == {"10.1.0.3": b"c1\r\neth1", "fd00::3": b"c1\r\neth1",
                                "10.1.0.4": b"c2\r\neth0", "fd00::4": b"c2\r\neth0"}
    delete(conf, "c1", "eth0")


def test_delete_works_when_the_ranges_no_longer_parse(data_dir, netns_path):
    add(network(data_dir), netns_path)
    delete(network(data_dir, {"subnet": "10.1.0.1/24"}))
    assert leases(data_dir) == {}


def test_delete_releases_leases_of_the_older_format(data_dir):
    conf = network(data_dir)
    directory = os.path.join(data_dir, "testnet")
    os.makedirs(directory)
    for name, content in (("10.1.0.2", b"c1"), ("10.1.0.3", b"c1\n"), ("10.1.0.4", b"c2")):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(content)
    delete(conf, "c1")
    assert leases(data_dir) == {"10.1.0.4": b"c2"}


def test_older_format_stays_when_the_attachment_has_a_current_lease(data_dir, netns_path):
    conf = network(data_dir)
    add(conf, netns_path)
    with open(os.path.join(data_dir, "testnet", "10.1.0.9"), "wb") as f:
        f.write(b"c1")
    delete(conf)
    assert leases(data_dir) == {"10.1.0.9": b"c1"}   # as the reference: the next DEL takes it
    delete(conf)
    assert leases(data_dir) == {}


# ---- CHECK ----

def test_check(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]})
    result = add(conf, netns_path)
    assert call("CHECK", conf, netns_path) == (None, 0)
    assert call("CHECK", dict(conf, prevResult=result), netns_path) == (None, 0)
    wrong = json.loads(json.dumps(result))
    wrong["ips"][0]["address"] = "10.1.0.99/24"
    out, code = call("CHECK", dict(conf, prevResult=wrong), netns_path)
    assert code == 105 and "10.1.0.99" in out["msg"]
    os.unlink(os.path.join(data_dir, "testnet", "fd00::2"))
    out, code = call("CHECK", conf, netns_path)
    assert code == 105 and "range set 1" in out["msg"] and "c1" in out["msg"]
    out, code = call("CHECK", conf, netns_path, container_id="other")
    assert code == 105


def test_check_accepts_a_lease_of_the_older_format(data_dir, netns_path):
    os.makedirs(os.path.join(data_dir, "testnet"))
    with open(os.path.join(data_dir, "testnet", "10.1.0.2"), "wb") as f:
        f.write(b"c1")
    assert call("CHECK", network(data_dir), netns_path) == (None, 0)


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_check_needs_0_4_0(version, data_dir, netns_path):
    out, code = call("CHECK", network(data_dir, version=version), netns_path)
    assert code == 1


# ---- GC ----

def test_gc_releases_leases_of_attachments_that_are_gone(data_dir, netns_path):
    conf = network(data_dir)
    for container_id, ifname in (("c1", "eth0"), ("c2", "eth0"), ("c3", "eth0"), ("c3", "eth1")):
        add(conf, netns_path, container_id, ifname)
    directory = os.path.join(data_dir, "testnet")
    for name, content in (("10.1.0.100", b"c1"), ("10.1.0.101", b"c9"), ("10.1.0.5.77.podplumb-tmp", b"c9")):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(content)
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"},
                                                     {"containerID": "c3", "ifname": "eth1"}]})
    assert call("GC", gc) == (None, 0)
    assert leases(data_dir) == {"10.1.0.2": b"c1\r\neth0", "10.1.0.5": b"c3\r\neth1", "10.1.0.100": b"c1"}
    assert sorted(files(data_dir)) == ["10.1.0.100", "10.1.0.2", "10.1.0.5", "last_reserved_ip.0", "lock"]
    assert call("GC", dict(conf, **{"cni.dev/valid-attachments": []})) == (None, 0)
    assert leases(data_dir) == {}


def test_gc_needs_the_valid_attachments(data_dir):
    out, code = call("GC", network(data_dir))
    assert code == 7 and "cni.dev/valid-attachments" in out["msg"]
    out, code = call("GC", network(data_dir, **{"cni.dev/valid-attachments": [{"containerID": "x"}]}))
    assert code == 7


def test_gc_without_a_lease_directory(data_dir):
    assert call("GC", network(data_dir, **{"cni.dev/valid-attachments": []})) == (None, 0)
    assert os.listdir(data_dir) == []


@pytest.mark.parametrize("command", ["GC", "STATUS"])
@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_gc_and_status_need_1_1_0(command, version, data_dir):
    out, code = call(command, network(data_dir, version=version, **{"cni.dev/valid-attachments": []}))
    assert code == 1


# ---- STATUS ----

def test_status(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/30"}]]})
    assert call("STATUS", conf) == (None, 0)
    assert os.listdir(data_dir) == []        # STATUS creates nothing
    add(conf, netns_path)
    out, code = call("STATUS", conf)
    assert code == 50 and out["msg"] == "range set 1 (10.2.0.1-10.2.0.2) is exhausted"
    delete(conf)
    assert call("STATUS", conf) == (None, 0)


def test_status_and_add_with_an_unwritable_data_dir(data_dir, netns_path):
    blocker = os.path.join(data_dir, "file")
    open(blocker, "w").close()
    conf = network(os.path.join(blocker, "sub"))
    out, code = call("STATUS", conf)
    assert code == 50 and "not writable" in out["msg"] and blocker in out["details"]
    out, code = call("ADD", conf, netns_path)
    assert code == 5 and blocker in out["msg"]


def test_status_on_a_read_only_mount(data_dir):
    mount = os.path.join(data_dir, "ro")
    os.mkdir(mount)
    kernel.sh("mount", "-t", "tmpfs", "-o", "ro,size=1m", "pphl", mount)
    try:
        out, code = call("STATUS", network(mount))
        assert code == 50 and mount in out["details"]
    finally:
        kernel.sh("umount", mount)


# ---- failures leave nothing behind ----

def test_dual_stack_partial_failure_releases_what_it_reserved(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/126"}]]})
    add(network(data_dir, {"ranges": [[{"subnet": "fd00::/126"}]]}), netns_path, "c0")
    add(network(data_dir, {"ranges": [[{"subnet": "fd00::/126"}]]}), netns_path, "c9")
    before = files(data_dir)
    out, code = call("ADD", conf, netns_path, "c1")
    assert code == 101 and "range set 1" in out["msg"]
    assert files(data_dir) == before             # no 10.1.0.2 lease, no last_reserved_ip.1 change


def test_rollback_restores_the_round_robin_position(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]})
    add(conf, netns_path, "c0")
    before = files(data_dir)
    out, code = call("ADD", dict(conf, runtimeConfig={"ips": ["fd00::2"]}), netns_path, "c1")
    assert code == 102 and "c0" in out["msg"]
    assert files(data_dir) == before


# ---- temporary files left by a writer killed mid-write ----

def _killed_mid_write(data_dir) -> str:
    """Run a real writer in a child and SIGKILL it between writing its temporary file and linking
    it: returns the name of the file it left behind."""
    code = ("import os, signal, sys\n"
            "from plugins.host_local.config import Location\n"
            "from plugins.host_local.store import Store\n"
            "from plugins.host_local.ranges import parse_address\n"
            "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
            "store = Store(Location('testnet', sys.argv[1]))\n"
            "with store.locked():\n"
            "    store.reserve(parse_address('10.1.0.2', 'x'), 'dead', 'eth0')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, data_dir],
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.wait(timeout=30) == -9
    left = [name for name in files(data_dir) if name.endswith(".podplumb-tmp")]
    assert left == [f"10.1.0.2.{proc.pid}.podplumb-tmp"]
    return left[0]


@pytest.mark.parametrize("indexed", [False, True], ids=["no-index", "current-index"])
@pytest.mark.parametrize("command", ["ADD", "DEL", "GC"])
def test_temporary_file_of_a_killed_writer_goes_with_the_next_operation(command, indexed, data_dir, netns_path):
    """Also when the lease index was current before: the file's creation changed the directory, so the
    next operation reads the directory (and removes it) instead of trusting the index."""
    conf = network(data_dir)
    if indexed:
        os.makedirs(os.path.join(data_dir, "testnet"))
        delete(conf, "c9")
        assert current_index(data_dir) == {}
    _killed_mid_write(data_dir)
    assert current_index(data_dir) is None
    if command == "ADD":
        assert addresses(add(conf, netns_path, "c1")) == ["10.1.0.2/24"]   # never counted as a lease
    elif command == "DEL":
        delete(conf, "c9")
    else:
        assert call("GC", dict(conf, **{"cni.dev/valid-attachments": []})) == (None, 0)
    assert not [name for name in files(data_dir) if name.endswith(".podplumb-tmp")]
    assert current_index(data_dir) == ({"10.1.0.2": "c1 eth0"} if command == "ADD" else {})


def test_temporary_file_is_no_lease_for_status_or_check(data_dir, netns_path):
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.2",
                                            "rangeEnd": "10.1.0.2"}]]})
    _killed_mid_write(data_dir)
    assert call("STATUS", conf) == (None, 0)           # the one address is still free
    out, code = call("CHECK", conf, netns_path, "dead", "eth0")
    assert code == CHECK_FAILED and "holds no lease" in out["msg"]


def test_delete_with_prev_result_releases_the_reported_leases_or_the_attachments(data_dir, netns_path, monkeypatch):
    """prevResult's addresses are read one by one; when one is not the attachment's (or missing), the
    attachment's leases are found as without prevResult. Neither lists the directory while the lease
    index is current."""
    conf = network(data_dir, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]})
    first = add(conf, netns_path, "c1", "eth0")
    add(conf, netns_path, "c2", "eth0")
    scanned = scans(monkeypatch)
    delete(dict(conf, prevResult=first), "c1", "eth0")
    assert leases(data_dir) == {"10.1.0.3": b"c2\r\neth0", "fd00::3": b"c2\r\neth0"}
    wrong = dict(first, ips=[dict(first["ips"][0], address="10.1.0.3/24")])     # c2's v4 address only
    delete(dict(conf, prevResult=wrong), "c1", "eth0")             # not c1's: c1 holds nothing more
    assert leases(data_dir) == {"10.1.0.3": b"c2\r\neth0", "fd00::3": b"c2\r\neth0"}
    delete(dict(conf, prevResult=wrong), "c2", "eth0")               # one range set unreported
    assert leases(data_dir) == {}
    assert scanned == []
    assert current_index(data_dir) == {}


def test_a_lease_of_a_long_container_id_is_found_again_and_released(data_dir, netns_path):
    """A lease file holds the whole container ID: one longer than a read's usual size is still found
    (a repeated ADD gets the same address) and released."""
    conf = network(data_dir)
    long_id = "c" * 5000
    first = add(conf, netns_path, container_id=long_id)
    assert add(conf, netns_path, container_id=long_id)["ips"] == first["ips"]
    delete(conf, container_id=long_id)
    assert leases(data_dir) == {}
