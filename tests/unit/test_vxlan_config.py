"""vxlan's static mode: this host's subnet from `subnet`, or from an IPAM that names exactly one."""

import ipaddress

import pytest

from cni.errors import CNIError
from plugins.vxlan.config import parse

PEERS = [{"underlayIP": "192.168.77.2", "subnet": "10.77.2.0/24"}]


def plugin(**keys):
    return {"name": "ov", "type": "vxlan", "vni": 7, "peers": PEERS, **keys}


@pytest.mark.parametrize("ipam", [
    {"type": "host-local", "subnet": "10.77.1.0/24"},
    {"type": "host-local", "ranges": [[{"subnet": "10.77.1.0/24", "rangeStart": "10.77.1.10"}]]},
    {"type": "host-local", "ranges": [[{"subnet": "10.77.1.0/24"}], [{"subnet": "fd77::/64"}]]},
])
def test_static_subnet_is_derived_from_a_single_ipam_subnet(ipam):
    conf = parse(plugin(ipam=ipam))
    assert conf.subnet == ipaddress.ip_network("10.77.1.0/24")
    assert [str(p.subnet) for p in conf.peers] == ["10.77.2.0/24"]


@pytest.mark.parametrize("ipam", [
    {"type": "host-local"},
    {"type": "host-local", "ranges": [[{"subnet": "10.77.1.0/24"}, {"subnet": "10.77.3.0/24"}]]},
    {"type": "host-local", "ranges": [[{"subnet": "fd77::/64"}]]},
])
def test_static_mode_without_a_single_ipam_subnet_asks_for_subnet(ipam):
    with pytest.raises(CNIError) as refused:
        parse(plugin(ipam=ipam))
    assert refused.value.code == 7 and "'peers' needs 'subnet'" in refused.value.msg


def test_an_explicit_subnet_wins():
    conf = parse(plugin(subnet="10.77.1.0/24", ipam={"type": "host-local", "ranges": [[{"subnet": "10.77.1.0/25"}]]}))
    assert conf.subnet == ipaddress.ip_network("10.77.1.0/24")


def test_without_peers_it_stays_cluster_mode():
    assert parse(plugin(peers=None, ipam={"type": "host-local", "subnet": "10.77.1.0/24"})).cluster_mode
