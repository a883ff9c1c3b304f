"""Bad configs: the right code, a message naming the problem, and nothing written."""

import os

import pytest

from plugins.host_local import ranges
from tests.unit.test_host_local import call, network

R = "ranges"

BAD_IPAM = [
    # (ipam, code, words the message must contain)
    ({}, 7, ["no IP ranges"]),
    ({R: []}, 7, ["no IP ranges"]),
    ({R: "10.1.0.0/24"}, 7, ["ipam.ranges", "list"]),
    ({R: [[]]}, 7, ["ipam.ranges[0]", "non-empty"]),
    ({R: [{"subnet": "10.1.0.0/24"}]}, 7, ["ipam.ranges[0]"]),
    ({R: [["10.1.0.0/24"]]}, 7, ["ipam.ranges[0]", "object"]),
    ({R: [[{}]]}, 7, ["ipam.ranges[0]", "no subnet"]),
    ({"subnet": "10.1.0.0"}, 7, ["10.1.0.0", "CIDR"]),
    ({"subnet": "10.1.0.0/33"}, 7, ["10.1.0.0/33", "CIDR"]),
    ({"subnet": "bogus/24"}, 7, ["bogus/24", "CIDR"]),
    ({"subnet": 17}, 7, ["subnet", "string"]),
    ({"subnet": "10.1.0.5/24"}, 7, ["10.1.0.5/24", "host bits", "10.1.0.0"]),
    ({"subnet": "10.1.0.0/31"}, 7, ["10.1.0.0/31", "too small"]),
    ({"subnet": "fd00::/127"}, 7, ["fd00::/127", "too small"]),
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.5"}, 7, ["rangeStart", "10.2.0.5", "10.1.0.0/24"]),
    ({"subnet": "10.1.0.0/24", "rangeEnd": "10.2.0.5"}, 7, ["rangeEnd", "10.2.0.5", "10.1.0.0/24"]),
    ({"subnet": "10.1.0.0/24", "rangeStart": "fd00::5"}, 7, ["rangeStart", "fd00::5", "10.1.0.0/24"]),
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.8"}, 7,
     ["rangeStart 10.1.0.9", "after", "rangeEnd 10.1.0.8"]),
    ({"subnet": "10.1.0.0/24", "rangeStart": "x"}, 7, ["rangeStart", "'x'", "not an IP"]),
    ({"subnet": "10.1.0.0/24", "gateway": "10.2.0.1"}, 7, ["gateway", "10.2.0.1", "10.1.0.0/24"]),
    ({"subnet": "10.1.0.0/24", "gateway": "10.1.0.255"}, 7, ["gateway", "10.1.0.255"]),
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.1", "rangeEnd": "10.1.0.1"}, 7,
     ["10.1.0.1-10.1.0.1", "no address"]),
    ({"rangeStart": "10.1.0.5", R: [[{"subnet": "10.1.0.0/24"}]]}, 7, ["ipam.rangeStart", "subnet"]),
    ({R: [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]}, 7, ["ipam.ranges[0]", "IPv4 and IPv6"]),
    ({R: [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/25"}]]}, 7, ["ipam.ranges[0]", "overlap"]),
    ({R: [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/16"}]]}, 7,
     ["ipam.ranges[0]", "ipam.ranges[1]", "overlaps"]),
    ({"subnet": "10.1.0.0/24", R: [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.200"}]]}, 7,
     ["ipam (", "ipam.ranges[0]", "overlaps"]),
    ({"subnet": "10.1.0.0/24", "routes": [{"gw": "10.1.0.1"}]}, 7, ["ipam.routes[0]", "dst"]),
    ({"subnet": "10.1.0.0/24", "routes": [{"dst": "10.0.0.0"}]}, 7, ["ipam.routes[0]", "10.0.0.0", "CIDR"]),
    ({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "nope"}]}, 7, ["ipam.routes[0]", "gw"]),
    ({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0", "mtu": "1500"}]}, 7, ["mtu", "integer"]),
    ({"subnet": "10.1.0.0/24", "routes": {}}, 7, ["ipam.routes", "list"]),
    ({"subnet": "10.1.0.0/24", "dataDir": 5}, 7, ["dataDir"]),
    ({"subnet": "10.1.0.0/24", "dataDir": "leases"}, 7, ["dataDir", "'leases'", "absolute"]),
    ({"subnet": "10.1.0.0/24", "resolvConf": ["x"]}, 7, ["resolvConf"]),
]


@pytest.mark.parametrize("ipam, code, words", BAD_IPAM, ids=[str(i) for i in range(len(BAD_IPAM))])
def test_bad_ipam_config(ipam, code, words, data_dir, netns_path):
    conf = network(data_dir, ipam)
    for command in ("ADD", "CHECK", "STATUS"):
        out, got = call(command, conf, netns_path)
        assert got == code, (command, out)
        text = out["msg"] + " " + out.get("details", "")
        assert all(w in text for w in words), (command, out)
    assert os.listdir(data_dir) == []


BAD_NETWORK = [
    (lambda d: {k: v for k, v in network(d).items() if k != "ipam"}, 7, ["ipam"]),
    (lambda d: dict(network(d), ipam="host-local"), 7, ["ipam"]),
    (lambda d: dict(network(d), name="a/b"), 7, ["a/b"]),
    (lambda d: dict(network(d), name=".."), 7, [".."]),
    (lambda d: {k: v for k, v in network(d).items() if k != "name"}, 7, ["name"]),
    (lambda d: dict(network(d), runtimeConfig={"ips": "10.1.0.5"}), 7, ["runtimeConfig.ips", "list"]),
    (lambda d: dict(network(d), runtimeConfig={"ipRanges": [[{"subnet": "10.1.0.0/33"}]]}), 7,
     ["runtimeConfig.ipRanges[0]", "10.1.0.0/33"]),
    (lambda d: dict(network(d), args={"cni": {"ips": ["10.1.0.500"]}}), 7, ["args.cni.ips", "10.1.0.500"]),
]


@pytest.mark.parametrize("make, code, words", BAD_NETWORK, ids=[str(i) for i in range(len(BAD_NETWORK))])
def test_bad_network_config(make, code, words, data_dir, netns_path):
    out, got = call("ADD", make(data_dir), netns_path)
    assert got == code, out
    assert all(w in out["msg"] + " " + out.get("details", "") for w in words), out
    assert os.listdir(data_dir) == []


def test_delete_with_a_bad_name_is_refused(data_dir):
    out, code = call("DEL", dict(network(data_dir), name="a/b"))
    assert code == 7
    assert os.listdir(data_dir) == []


@pytest.mark.parametrize("spec, first, last, size", [
    ({"subnet": "10.1.0.0/24"}, "10.1.0.1", "10.1.0.254", 253),
    ({"subnet": "10.1.0.0/30"}, "10.1.0.1", "10.1.0.2", 1),
    ({"subnet": "fd00::/120"}, "fd00::1", "fd00::ff", 254),
    ({"subnet": "10.1.0.0/24", "gateway": "10.1.0.254"}, "10.1.0.1", "10.1.0.254", 253),
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.19"}, "10.1.0.10", "10.1.0.19", 10),
])
def test_range_defaults(spec, first, last, size):
    parsed = ranges.parse_range(spec, "test")
    assert str(parsed) == f"{first}-{last}"
    assert parsed.size() == size
