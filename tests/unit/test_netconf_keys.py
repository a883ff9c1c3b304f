"""Keys matched as the reference's Go decoding matches them, with what containerd's CNI library sends."""

import json

from cni import netconf, skel
from plugins.bridge import config as bridge_config
from plugins.bridge.plugin import PLUGIN as BRIDGE
from plugins.host_local import config as host_local_config
from plugins.portmap import config as portmap_config
from plugins.portmap.plugin import PLUGIN as PORTMAP

# runtimeConfig as containerd's go-cni marshals it: Go field names, no JSON tags.
GO_CNI_RUNTIME = {
    "portMappings": [{"HostPort": 18400, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""},
                     {"HostPort": 5353, "ContainerPort": 53, "Protocol": "UDP", "HostIP": "127.0.0.1"}],
    "bandwidth": {"IngressRate": 1000000, "IngressBurst": 20000, "EgressRate": 2000000, "EgressBurst": 30000},
    "dns": {"Servers": ["10.96.0.10"], "Searches": ["default.svc.cluster.local"], "Options": ["ndots:5"],
            "Domain": "cluster.local"},
    "ipRanges": [[{"Subnet": "10.1.0.0/24", "RangeStart": "10.1.0.10", "RangeEnd": "10.1.0.20",
                   "Gateway": "10.1.0.1"}]],
}
ENV = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}


def _request(plugin, body: dict) -> skel.Request:
    return skel.parse_request(ENV, json.dumps(body).encode(), plugin.config_fields)


def test_go_cni_runtime_config_becomes_canonical():
    out = netconf.network_config({"name": "n", "runtimeConfig": GO_CNI_RUNTIME})["runtimeConfig"]
    assert out["portMappings"][0] == {"hostPort": 18400, "containerPort": 80, "protocol": "tcp", "hostIP": ""}
    assert out["bandwidth"] == {"ingressRate": 1000000, "ingressBurst": 20000, "egressRate": 2000000,
                                "egressBurst": 30000}
    assert out["dns"] == {"servers": ["10.96.0.10"], "searches": ["default.svc.cluster.local"],
                          "options": ["ndots:5"], "domain": "cluster.local"}
    assert out["ipRanges"] == [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20",
                                 "gateway": "10.1.0.1"}]]


def test_exact_spelling_first_then_last_key_wins():
    # Go: an exact match is preferred; several keys folding onto one field: the last one wins.
    assert netconf.canonicalise({"hostport": 1, "hostPort": 2}, netconf.PORT_MAPPING) == {"hostPort": 2}
    assert netconf.canonicalise({"hostPort": 2, "HOSTPORT": 3}, netconf.PORT_MAPPING) == {"hostPort": 3}
    # Unknown keys and map-valued fields keep their spelling.
    out = netconf.network_config({"Capabilities": {"PortMappings": True}, "X-Custom": 1})
    assert out == {"capabilities": {"PortMappings": True}, "X-Custom": 1}


def test_values_of_unexpected_types_pass_through_for_validation():
    out = netconf.network_config({"runtimeConfig": {"PortMappings": "nope"}, "ipam": [1], "DNS": None})
    assert out == {"runtimeConfig": {"portMappings": "nope"}, "ipam": [1], "dns": None}


def test_portmap_reads_go_cni_port_mappings():
    conf = portmap_config.load(_request(PORTMAP, {"cniVersion": "1.0.0", "Name": "net1", "Type": "portmap",
                                                  "SNAT": False, "runtimeConfig": GO_CNI_RUNTIME}))
    assert conf.snat is False
    assert [(m.host_port, m.container_port, m.protocol, str(m.host_ip)) for m in conf.mappings] == \
        [(18400, 80, "tcp", "None"), (5353, 53, "udp", "127.0.0.1")]


def test_top_level_and_ipam_keys_case_insensitive():
    request = _request(BRIDGE, {"CNIVersion": "1.0.0", "NAME": "net1", "type": "bridge", "Bridge": "br-x",
                                "IsGateway": True, "IPMasq": True, "MTU": 1400,
                                "IPAM": {"Type": "host-local", "DataDir": "/tmp/x",
                                         "Ranges": [[{"Subnet": "10.2.0.0/24"}]],
                                         "Routes": [{"Dst": "0.0.0.0/0", "GW": "10.2.0.1"}]},
                                "RuntimeConfig": {"MAC": "0a:58:0a:01:00:05"}})
    assert request.version == "1.0.0" and request.network == "net1"
    conf = bridge_config.load(request)
    assert (conf.bridge, conf.is_gateway, conf.ip_masq, conf.mtu, conf.mac) == \
        ("br-x", True, True, 1400, "0a:58:0a:01:00:05")
    ipam = host_local_config.load(request.config, {})
    assert ipam.location.data_dir == "/tmp/x"
    assert [str(r) for r in ipam.range_sets] and ipam.routes == ({"dst": "0.0.0.0/0", "gw": "10.2.0.1"},)


def test_runtime_ip_ranges_from_go_cni():
    request = _request(BRIDGE, {"cniVersion": "1.0.0", "name": "net1", "type": "bridge",
                                "ipam": {"type": "host-local"}, "runtimeConfig": GO_CNI_RUNTIME})
    sets = host_local_config.load(request.config, {}).range_sets
    assert len(sets) == 1 and str(sets[0]) == "10.1.0.10-10.1.0.20"
    assert str(sets[0].ranges[0].subnet) == "10.1.0.0/24"


def test_ipam_plugins_keys():
    ipam = netconf.network_config({"IPAM": {"Type": "dhcp", "DaemonSocketPath": "/run/x.sock",
                                            "Addresses": [{"Address": "10.1.0.5/24", "Gateway": "10.1.0.1"}]}})["ipam"]
    assert ipam == {"type": "dhcp", "daemonSocketPath": "/run/x.sock",
                    "addresses": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}]}
