"""portmap config and rule building, without a kernel."""

import ipaddress
import json

import pytest

from cni import nftables
from cni.errors import CNIError
from cni.nftables import Rule
from cni.skel import parse_request
from plugins.portmap import config as configs
from plugins.portmap import rules
from plugins.portmap.rules import HostPort

PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "br0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
        "ips": [{"address": "10.1.0.5/24", "interface": 2}, {"address": "10.9.0.1/24", "interface": 0},
                {"address": "fd00:1::5/64", "interface": 2}, {"address": "10.1.0.6/24", "interface": 2}]}


def _request(**config):
    body = {"cniVersion": "1.0.0", "name": "net1", "type": "portmap", "prevResult": PREV, **config}
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",   # DEL: no netns needed
           "CNI_PATH": "/opt/cni/bin"}
    return parse_request(env, json.dumps(body).encode())


def _config(mappings, **config):
    return configs.load(_request(runtimeConfig={"portMappings": mappings}, **config))


def test_defaults_and_protocols():
    config = _config([{"hostPort": 80, "containerPort": 8080}, {"hostPort": 53, "containerPort": 53, "protocol": "UDP"}])
    assert config.snat is True and config.masq_all is False
    assert [m.protocol for m in config.mappings] == ["tcp", "udp"]


@pytest.mark.parametrize("bad", [
    {"hostPort": 0, "containerPort": 80}, {"hostPort": 80, "containerPort": 70000},
    {"hostPort": "80", "containerPort": 80}, {"hostPort": 80, "containerPort": 80, "protocol": "icmp"},
    {"hostPort": 80, "containerPort": 80, "hostIP": "not-an-ip"},
])
def test_invalid_mappings_are_config_errors(bad):
    with pytest.raises(CNIError) as failure:
        _config([bad])
    assert failure.value.code == 7


def test_conditions_must_be_match_tokens():
    with pytest.raises(CNIError):
        _config([], conditionsV4=["ip saddr 1.2.3.4; flush ruleset"])
    with pytest.raises(CNIError):
        _config([], conditionsV6="ip6 saddr ::1")


def test_container_addresses_skip_host_interfaces():
    addresses = configs.container_addresses(PREV, "eth0")
    assert addresses == [ipaddress.ip_interface("10.1.0.5/24"), ipaddress.ip_interface("fd00:1::5/64")]


def test_desired_rules():
    config = _config([{"hostPort": 80, "containerPort": 8080},
                      {"hostPort": 81, "containerPort": 8080, "hostIP": "192.0.2.1"}],
                     conditionsV4=["ip", "saddr", "!=", "198.51.100.0/24"])
    addresses = configs.container_addresses(PREV, "eth0")
    wanted = rules.desired(config, addresses, "c1/eth0")
    dnat = [w.text for w in wanted if w.claim]
    assert dnat == [
        "meta nfproto ipv4 ip saddr != 198.51.100.0/24 tcp dport 80 dnat ip to 10.1.0.5:8080",
        "meta nfproto ipv4 ip saddr != 198.51.100.0/24 ip daddr 192.0.2.1 tcp dport 81 dnat ip to 10.1.0.5:8080",
        "meta nfproto ipv6 tcp dport 80 dnat ip6 to [fd00:1::5]:8080",          # the v4 hostIP skips v6
    ]
    snat = [w.text for w in wanted if w.chain == rules.SNAT]
    assert snat == [                                            # one set per container port, not per mapping
        "meta nfproto ipv4 ip saddr 10.1.0.0/24 ip daddr 10.1.0.5 tcp dport 8080 ct status dnat masquerade",
        "meta nfproto ipv4 ip saddr 127.0.0.0/8 ip daddr 10.1.0.5 tcp dport 8080 ct status dnat masquerade",
        "meta nfproto ipv6 ip6 saddr fd00:1::/64 ip6 daddr fd00:1::5 tcp dport 8080 ct status dnat masquerade",
    ]
    assert [w.words[0] for w in wanted if w.claim] == ["tcp/80@0.0.0.0", "tcp/81@192.0.2.1", "tcp/80@::"]
    assert [w.chain for w in wanted if w.claim] == ["hp-tcp-80", "hp-tcp-81", "hp-tcp-80"]     # one chain a port


def test_snat_false_and_masq_all():
    addresses = configs.container_addresses(PREV, "eth0")
    assert all(w.claim for w in rules.desired(
        _config([{"hostPort": 80, "containerPort": 80}], snat=False), addresses, "c1/eth0"))
    masq = [w.text for w in rules.desired(_config([{"hostPort": 80, "containerPort": 80}], masqAll=True),
                                          addresses, "c1/eth0") if w.chain == rules.SNAT]
    assert masq == ["meta nfproto ipv4 ip daddr 10.1.0.5 tcp dport 80 ct status dnat masquerade",
                    "meta nfproto ipv6 ip6 daddr fd00:1::5 tcp dport 80 ct status dnat masquerade"]


def test_overlapping_mappings_of_one_request_are_refused():
    addresses = configs.container_addresses(PREV, "eth0")
    config = _config([{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81, "hostIP": "0.0.0.0"}])
    with pytest.raises(CNIError) as failure:
        rules.desired(config, addresses, "c1/eth0")
    assert failure.value.code == 7


def test_host_port_words_round_trip_and_overlap():
    wildcard, specific = HostPort(4, "tcp", 80, None), HostPort(4, "tcp", 80, "192.0.2.1")
    for claim in (wildcard, specific, HostPort(6, "udp", 53, "fd00::1"), HostPort(6, "sctp", 9, None)):
        assert HostPort.parse(claim.word()) == claim
    assert wildcard.overlaps(specific) and specific.overlaps(wildcard)
    assert not specific.overlaps(HostPort(4, "tcp", 80, "192.0.2.3"))
    assert not wildcard.overlaps(HostPort(6, "tcp", 80, None))
    assert not wildcard.overlaps(HostPort(4, "udp", 80, None))
    assert HostPort.parse("garbage") is None


def test_conflicts_name_the_holder_but_ignore_our_own_rules():
    holder = nftables.tag("net1", "other", "eth0")
    own = nftables.tag("net1", "c1", "eth0")
    listing = [Rule("hp-tcp-80", 5, f"{holder} tcp/80@192.0.2.1 other/eth0", ()),
               Rule("hp-tcp-81", 6, f"{own} tcp/81@0.0.0.0 c1/eth0", ())]
    addresses = configs.container_addresses(PREV, "eth0")
    wanted = rules.desired(_config([{"hostPort": 81, "containerPort": 80}]), addresses, "c1/eth0")
    rules.check_conflicts(wanted, listing, own, "net1")
    wanted = rules.desired(_config([{"hostPort": 80, "containerPort": 80}]), addresses, "c1/eth0")
    with pytest.raises(CNIError) as failure:
        rules.check_conflicts(wanted, listing, own, "net1")
    assert failure.value.code == 104
    assert "other/eth0" in failure.value.msg and "network net1" in failure.value.msg


def test_chain_names_of_ports_and_interfaces():
    assert rules.port_chain("udp", 53) == "hp-udp-53" and rules.port_key("hp-udp-53") == "udp . 53"
    assert rules.localnet_interface(rules.localnet_chain("cni0@x")) == "cni0@x"
    assert rules.localnet_interface("hp-tcp-80") is None
