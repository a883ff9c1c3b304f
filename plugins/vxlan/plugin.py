"""vxlan: pods on a host bridge, hosts joined by a VXLAN overlay (one VTEP per host and network).

The pod side is the bridge plugin's (see delegate); this module adds the VTEP and, in static mode,
the peer entries. The VTEP and peer entries are shared by all pods of the network on this host:
they change only under the network's lock.
"""

from cni import netlink, skel
from cni.errors import CNIError, CHECK_FAILED
from cni.rollback import Rollback
from plugins.bridge import plugin as bridge

from plugins.vxlan import config, delegate, lock, peers, resolve, vtep


def add(request: skel.Request) -> dict:
    conf = config.load(request)
    with lock.held(conf.lock_file), netlink.Namespace() as host, Rollback() as undo:
        spec = resolve.host_spec(conf, host)
        static_peers = None if conf.cluster_mode else resolve.static_peers(conf, spec)
        index, created = vtep.ensure(host, spec)
        if created:
            undo.push("VTEP", lambda: host.delete_link(spec.name))
        if static_peers is not None:
            peers.sync(host, index, static_peers)
        return bridge.add(delegate.bridge_request(request, conf, spec.subnet, spec.mtu))


def delete(request: skel.Request):
    """The pod's veth and lease go; the VTEP stays for the network's other pods (GC removes it)."""
    conf = config.load(request)
    bridge.delete(delegate.bridge_request(request, conf))


def check(request: skel.Request):
    conf = config.load(request)
    with netlink.Namespace() as host:
        spec = resolve.host_spec(conf, host)
        found = vtep.problems(host, spec)
        if not found and not conf.cluster_mode:
            found = peers.missing(host, host.link(spec.name).index, resolve.static_peers(conf, spec))
    if found:
        raise CNIError(CHECK_FAILED, found[0], "; ".join(found[1:]))
    bridge.check(delegate.bridge_request(request, conf, spec.subnet, spec.mtu))


def status(request: skel.Request):
    """Ready when this host knows its subnet (cluster mode: the registry's lease) and underlay, and
    IPAM can lease an address."""
    conf = config.load(request)
    with netlink.Namespace() as host:
        spec = resolve.host_spec(conf, host)
    bridge.status(delegate.bridge_request(request, conf, spec.subnet, spec.mtu))


def gc(request: skel.Request):
    """Stale leases go; with no attachment left, a static network's VTEP goes too (in cluster mode
    the overlay registry owns the VTEP)."""
    conf = config.load(request)
    with lock.held(conf.lock_file):
        bridge.gc(delegate.bridge_request(request, conf))
        if conf.cluster_mode or request.config.get("cni.dev/valid-attachments"):
            return
        with netlink.Namespace() as host:
            if host.vxlan(conf.vtep) is not None:
                host.delete_link(conf.vtep)


PLUGIN = skel.Plugin(name="vxlan", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields=config.FIELDS)
