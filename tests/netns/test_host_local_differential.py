"""host-local against the reference Go plugin (/usr/lib/cni/host-local, plugins 1.1.1, CNI <= 1.0.0):
the same calls give the same results and the same lease files, byte for byte; and either plugin
carries on where the other left off on the same lease directory."""

import json
import os
import random
import shutil
import subprocess
import tempfile

import pytest

from plugins.host_local import lease_index
from podplumb.install import install
from podplumb.runtime import exec_plugin

REFERENCE_BIN = "/usr/lib/cni"
REFERENCE_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")

pytestmark = pytest.mark.skipif(not os.access(os.path.join(REFERENCE_BIN, "host-local"), os.X_OK),
                                reason="reference host-local not installed")


@pytest.fixture(scope="module")
def our_bin():
    path = tempfile.mkdtemp(prefix="pphl-bin-")
    try:
        install(path)
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def ns_path(netns):
    return f"/run/netns/{netns('pphl')}"


@pytest.fixture
def temp_dir():
    path = tempfile.mkdtemp(prefix="pphl-diff-")
    try:
        yield path
    finally:
        shutil.rmtree(path)


class Side:
    """One plugin with its own lease directory."""

    def __init__(self, bin_dir, data_dir, netns):
        self.bin_dir, self.data_dir, self.netns = bin_dir, data_dir, netns

    def call(self, command, conf, container_id="c1", ifname="eth0", cni_args=""):
        """(parsed stdout, exit code)."""
        conf = json.loads(json.dumps(conf).replace("@DATADIR@", self.data_dir))
        run = exec_plugin(self.bin_dir, "host-local", command, conf, container_id=container_id,
                          netns=self.netns if command in ("ADD", "CHECK") else "", ifname=ifname,
                          cni_args=cni_args)
        return run.json, run.code

    def files(self, network="net") -> dict[str, bytes]:
        """The lease directory's files but our lease index (a cache of them, ours only)."""
        directory = os.path.join(self.data_dir, network)
        out = {}
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            if name == lease_index.NAME:
                continue
            with open(os.path.join(directory, name), "rb") as f:
                out[name] = f.read()
        return out


@pytest.fixture
def sides(our_bin, ns_path, temp_dir):
    reference = Side(REFERENCE_BIN, os.path.join(temp_dir, "reference"), ns_path)
    ours = Side(our_bin, os.path.join(temp_dir, "ours"), ns_path)
    return reference, ours


def conf(ipam, version="1.0.0", **extra):
    return {"cniVersion": version, "name": "net",
            "ipam": {"type": "host-local", "dataDir": "@DATADIR@", **ipam}, **extra}


def same(sides, command, config, container_id="c1", ifname="eth0", cni_args=""):
    """Run on both; both succeed with the same output, or both fail. Returns our output."""
    reference, ours = sides
    before = ours.files()
    want, want_code = reference.call(command, config, container_id, ifname, cni_args)
    got, got_code = ours.call(command, config, container_id, ifname, cni_args)
    assert (got_code == 0) == (want_code == 0), (command, container_id, want, got)
    if want_code == 0:
        assert got == want, (command, container_id)
        if command == "CHECK":   # the reference creates the directory and lock file; ours only reads
            assert ours.files() == before
        else:
            assert ours.files() == reference.files(), (command, container_id)
    else:
        # A failed ADD: the reference keeps the round-robin position it moved; ours changes nothing.
        assert ours.files() == before, (command, container_id)
        assert _leases(ours.files()) == _leases(reference.files()), (command, container_id)
    return got


def _leases(files: dict) -> dict:
    return {k: v for k, v in files.items() if not k.startswith("last_reserved_ip.")}


SCENARIOS = {
    "ipv4": {"subnet": "10.1.0.0/29"},
    "ipv6": {"ranges": [[{"subnet": "fd00::/125"}]]},
    "dual-stack": {"ranges": [[{"subnet": "10.1.0.0/29"}], [{"subnet": "fd00::/125", "gateway": "fd00::7"}]]},
    "legacy-every-key": {"subnet": "10.9.0.0/16", "rangeStart": "10.9.1.10", "rangeEnd": "10.9.1.14",
                         "gateway": "10.9.1.12"},
    "several-ranges": {"ranges": [[{"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.4"},
                                   {"subnet": "10.2.0.0/30"}]]},
    "legacy-plus-ranges": {"subnet": "10.1.0.0/29", "ranges": [[{"subnet": "fd00::/125"}]]},
    "routes": {"subnet": "10.1.0.0/29",
               "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.2.3.4/8", "gw": "10.1.0.6"}, {"dst": "fd00:1::/64"}]},
}


@pytest.mark.parametrize("version", REFERENCE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_same_allocations_and_files(scenario, version, sides):
    config = conf(SCENARIOS[scenario], version)
    for i in range(3):
        same(sides, "ADD", config, f"c{i}")
    same(sides, "DEL", config, "c1")
    for i in range(3, 9):                     # round-robin past the freed address, wrap, exhaust
        same(sides, "ADD", config, f"c{i}")
    if version != "0.3.0" and version != "0.3.1":
        same(sides, "CHECK", config, "c0")
    for i in range(9):
        same(sides, "DEL", config, f"c{i}")
    same(sides, "DEL", config, "c0")


def test_resolv_conf(sides, temp_dir):
    path = os.path.join(temp_dir, "resolv.conf")
    with open(path, "w") as f:
        f.write("# x\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain example.test\n"
                "search a.test b.test\n;y\noptions ndots:2 edns0\nsortlist 10.0.0.0\n")
    for version in REFERENCE_VERSIONS:
        out = same(sides, "ADD", conf({"subnet": "10.1.0.0/24", "resolvConf": path}, version), f"c-{version}")
        assert out["dns"]["nameservers"] == ["10.0.0.53", "fd00::53"]


@pytest.mark.parametrize("how", ["runtimeConfig", "args", "CNI_ARGS"])
def test_requested_addresses(how, sides):
    config = conf({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]})
    cni_args = ""
    if how == "runtimeConfig":
        config["runtimeConfig"] = {"ips": ["10.1.0.50/24", "fd00::50/64"]}
    elif how == "args":
        config["args"] = {"cni": {"ips": ["10.1.0.50", "fd00::50"]}}
    else:
        cni_args = "IgnoreUnknown=1;IP=10.1.0.50"   # the reference takes one address here
    same(sides, "ADD", config, "c1", cni_args=cni_args)
    same(sides, "ADD", conf({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]}), "c2")
    same(sides, "ADD", config, "c3", cni_args=cni_args)           # taken: both refuse, nothing left
    same(sides, "ADD", dict(config, runtimeConfig={"ips": ["10.7.0.1"]}), "c4")   # outside: both refuse
    same(sides, "ADD", dict(config, runtimeConfig={"ips": ["10.1.0.1"]}), "c4")   # gateway: both refuse


def test_runtime_ip_ranges(sides):
    config = conf({"ranges": [[{"subnet": "fd00::/64"}]]},
                  runtimeConfig={"ipRanges": [[{"subnet": "10.5.0.0/24", "rangeStart": "10.5.0.50"}]]})
    same(sides, "ADD", config, "c1")
    same(sides, "ADD", config, "c2")


def test_dual_stack_partial_failure_leaves_the_same_files(sides):
    same(sides, "ADD", conf({"ranges": [[{"subnet": "fd00::/126"}]]}), "c0")
    same(sides, "ADD", conf({"ranges": [[{"subnet": "fd00::/126"}]]}), "c9")
    same(sides, "ADD", conf({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/126"}]]}), "c1")


def test_older_lease_format_on_delete(sides):
    for side in sides:
        os.makedirs(os.path.join(side.data_dir, "net"))
        for name, content in (("10.1.0.2", b"c1"), ("10.1.0.3", b"c2"), ("10.1.0.4", b"c1\r\neth1")):
            with open(os.path.join(side.data_dir, "net", name), "wb") as f:
                f.write(content)
    config = conf({"subnet": "10.1.0.0/24"})
    same(sides, "CHECK", config, "c2")
    same(sides, "DEL", config, "c1", "eth1")     # a current lease: the older one stays
    same(sides, "DEL", config, "c1", "eth1")     # none left: the older one goes
    same(sides, "DEL", config, "c2")


# ---- interchangeability: one lease directory, both plugins in turn ----

def test_either_plugin_continues_the_other(our_bin, ns_path, temp_dir):
    reference = Side(REFERENCE_BIN, temp_dir, ns_path)
    ours = Side(our_bin, temp_dir, ns_path)
    config = conf({"ranges": [[{"subnet": "10.1.0.0/29"}], [{"subnet": "fd00::/125"}]]})

    def add(side, container_id):
        out, code = side.call("ADD", config, container_id)
        assert code == 0, out
        return [ip["address"] for ip in out["ips"]]

    assert add(reference, "c1") == ["10.1.0.2/29", "fd00::2/125"]
    assert add(reference, "c2") == ["10.1.0.3/29", "fd00::3/125"]
    assert add(ours, "c3") == ["10.1.0.4/29", "fd00::4/125"]       # round-robin continues
    assert ours.call("CHECK", config, "c1") == (None, 0)           # sees the reference's lease
    assert ours.call("DEL", config, "c1") == (None, 0)
    assert add(reference, "c4") == ["10.1.0.5/29", "fd00::5/125"]
    assert reference.call("CHECK", config, "c3")[1] == 0           # sees ours
    assert reference.call("DEL", config, "c3")[1] == 0
    assert add(ours, "c5") == ["10.1.0.6/29", "fd00::6/125"]
    assert add(reference, "c6") == ["10.1.0.2/29", "fd00::7/125"]  # wraps round on both
    assert add(ours, "c7") == ["10.1.0.4/29", "fd00::2/125"]
    assert add(ours, "c2") == ["10.1.0.3/29", "fd00::3/125"]       # ours: repeated ADD, same answer
    for container_id in ("c2", "c4", "c5", "c6", "c7"):
        side = ours if container_id in ("c2", "c6") else reference
        assert side.call("DEL", config, container_id)[1] == 0
    assert sorted(os.listdir(os.path.join(temp_dir, "net"))) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock",
                                                                 lease_index.NAME]


def test_interleaved_at_random_each_finds_every_lease(our_bin, ns_path, temp_dir):
    """Both plugins in turn on one directory, chosen at random (seeded) for each call: no address is
    handed out twice, each finds its own leases and the other's (CHECK, DEL, our repeated ADD), the
    reference never takes our lease index for a lease, and the index is never current and wrong."""
    rng = random.Random(1729)
    sides = {"reference": Side(REFERENCE_BIN, temp_dir, ns_path), "ours": Side(our_bin, temp_dir, ns_path)}
    config = conf({"ranges": [[{"subnet": "10.1.0.0/28"}], [{"subnet": "fd00::/124"}]]})   # 13 and 14 addresses
    directory = os.path.join(temp_dir, "net")
    live = {}                       # container ID -> its addresses
    for step in range(80):
        name = rng.choice(sorted(sides))
        side = sides[name]
        action = rng.choice(["ADD", "ADD", "DEL", "CHECK", "again"] if live else ["ADD"])
        if len(live) >= 10 and action == "ADD":
            action = "DEL"
        container_id = f"c{step}" if action == "ADD" else rng.choice(sorted(live))
        if action == "again" and name == "ours":          # the reference refuses a repeated ADD
            out, code = side.call("ADD", config, container_id)
            assert code == 0 and [ip["address"] for ip in out["ips"]] == live[container_id], (step, out)
        elif action == "again" or action == "CHECK":
            assert side.call("CHECK", config, container_id) == (None, 0), (step, name)
        elif action == "ADD":
            out, code = side.call("ADD", config, container_id)
            assert code == 0, (step, name, out)
            live[container_id] = [ip["address"] for ip in out["ips"]]
        else:
            assert side.call("DEL", config, container_id)[1] == 0, (step, name)
            del live[container_id]
        held = {address.split("/")[0]: container_id for container_id, addresses in live.items()
                for address in addresses}
        assert len(held) == 2 * len(live), (step, live)                 # no address twice
        on_disk = {name: content for name, content in side.files().items()
                   if name != "lock" and not name.startswith("last_reserved_ip.")}
        assert on_disk == {address: f"{holder}\r\neth0".encode() for address, holder in held.items()}, step
        try:
            with open(os.path.join(directory, lease_index.NAME), "rb") as f:
                index = lease_index.parse(f.read(), lease_index.state(directory))
        except FileNotFoundError:
            index = None
        assert index in (None, {address: f"{holder} eth0" for address, holder in held.items()}), (step, name)
        if name == "ours" and action != "CHECK":           # CHECK writes nothing, the index neither
            assert index is not None, (step, action)


def test_both_plugins_at_once_share_the_lock(our_bin, ns_path, temp_dir):
    config = conf({"subnet": "10.1.0.0/24"})
    stdin = json.dumps(config).replace("@DATADIR@", temp_dir).encode()
    procs = []
    for i in range(32):
        binary = os.path.join(REFERENCE_BIN if i % 2 else our_bin, "host-local")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c{i}",
               "CNI_NETNS": ns_path, "CNI_IFNAME": "eth0", "CNI_PATH": our_bin}
        proc = subprocess.Popen([binary], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        proc.stdin.write(stdin)
        proc.stdin.close()
        procs.append(proc)
    got = set()
    for proc in procs:
        out = json.loads(proc.stdout.read())
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0, out
        got.add(out["ips"][0]["address"])
    assert len(got) == 32
    names = os.listdir(os.path.join(temp_dir, "net"))
    assert len([n for n in names if n.startswith("10.")]) == 32


# ---- where we differ on purpose ----

def test_differences_from_the_reference(sides):
    reference, ours = sides
    config = conf({"subnet": "10.1.0.0/24"})
    same(sides, "ADD", config, "c1")
    # A repeated ADD: the reference refuses ("duplicate allocation"), ours returns the same lease.
    assert reference.call("ADD", config, "c1")[1] != 0
    assert ours.call("ADD", config, "c1")[0]["ips"][0]["address"] == "10.1.0.2/24"
    # A gateway outside the subnet: the reference hands it out as is, ours refuses the config.
    bad_gateway = conf({"subnet": "10.2.0.0/24", "gateway": "10.9.0.1"})
    assert reference.call("ADD", bad_gateway, "c2")[1] == 0
    out, code = ours.call("ADD", bad_gateway, "c2")
    assert code != 0 and out["code"] == 7
    # Several addresses in CNI_ARGS IP: only ours splits on commas.
    dual = conf({"ranges": [[{"subnet": "10.3.0.0/24"}], [{"subnet": "fd00::/64"}]]})
    assert reference.call("ADD", dual, "c3", cni_args="IP=10.3.0.9,fd00::9")[1] != 0
    out, code = ours.call("ADD", dual, "c3", cni_args="IP=10.3.0.9,fd00::9")
    assert [ip["address"] for ip in out["ips"]] == ["10.3.0.9/24", "fd00::9/64"]
    # Error codes: the reference says 999 for everything; ours names the kind.
    full = conf({"subnet": "10.4.0.0/30"})
    assert reference.call("ADD", full, "c4")[1] == ours.call("ADD", full, "c4")[1] == 0
    assert reference.call("ADD", full, "c5")[0]["code"] == 999
    assert ours.call("ADD", full, "c5")[0]["code"] == 101
