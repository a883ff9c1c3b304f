"""This host's place in the overlay: its VTEP and, in static mode, its peers."""

import ipaddress

from cni.errors import config_error
from cni.netlink import Namespace

from plugins.vxlan import lease_file, underlay, vtep
from plugins.vxlan.config import VxlanConfig
from plugins.vxlan.peers import Peer


def vtep_spec(conf: VxlanConfig, host: Namespace, subnet: ipaddress.IPv4Network,
              underlay_ip: str | None) -> vtep.Spec:
    link = underlay.find(host, underlay_ip)
    return vtep.Spec(name=conf.vtep, vni=conf.vni, port=conf.port, underlay_ip=link.ip,
                     underlay_index=link.index, mtu=conf.mtu or link.mtu - vtep.OVERHEAD, subnet=subnet)


def host_spec(conf: VxlanConfig, host: Namespace) -> vtep.Spec:
    """The VTEP from the config (static mode) or from the registry's lease file (cluster mode: the
    registry chose the subnet and the underlay address)."""
    if conf.cluster_mode:
        lease = lease_file.read(conf.lease_file)
        return vtep_spec(conf, host, lease.subnet, lease.underlay_ip)
    return vtep_spec(conf, host, conf.subnet, conf.underlay_ip)


def static_peers(conf: VxlanConfig, spec: vtep.Spec) -> tuple[Peer, ...]:
    for peer in conf.peers:
        if peer.underlay_ip == spec.underlay_ip:
            raise config_error(f"peer {peer.subnet} has this host's underlay address {peer.underlay_ip}",
                               f"this host owns {spec.subnet}; list it under that subnet or not at all")
    return tuple(Peer.derived(p.underlay_ip, p.subnet, conf.vni) for p in conf.peers)
