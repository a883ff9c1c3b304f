"""The host-local IPAM plugin: ADD, DEL, CHECK, STATUS and GC over the on-disk lease store."""

from cni import result as results, skel
from cni.rollback import Rollback
from cni.errors import CNIError, CHECK_FAILED, NOT_AVAILABLE, config_error
from plugins.host_local import allocator, config, resolv
from plugins.host_local.ranges import parse_address
from plugins.host_local.store import Store


def add(request: skel.Request) -> dict:
    """One address per range set for (container ID, ifname). Everything that can be refused is
    checked before the lease directory is touched; a failure part-way releases what this call
    reserved. Repeating an ADD returns the addresses the attachment already holds."""
    conf = config.load(request.config, request.args)
    wanted = allocator.route_requested(conf.range_sets, conf.requested)
    dns = resolv.parse(conf.resolv_conf) if conf.resolv_conf else {}
    store = Store(conf.location)
    with store.locked(), Rollback() as undo:
        allocation = allocator.Allocation(store, request.container_id, request.ifname, undo)
        ips = [allocation.get(s, wanted.get(s.index)) for s in conf.range_sets]
    return results.new(ips=ips, routes=[dict(r) for r in conf.routes], dns=dns)


def delete(request: skel.Request):
    """Release the attachment's leases. Only the network name and dataDir are read, so a DEL
    succeeds even after the ranges were edited into something invalid. As the reference does,
    leases of the older format (container ID only) go when the attachment has no other lease."""
    store = Store(config.load_location(request.config))
    if not store.exists():
        return
    with store.locked():
        mine = _reported_leases(store, request)
        if mine is None:
            leases = store.leases_of(request.container_id)
            mine = [lease for lease in leases if lease.held_by(request.container_id, request.ifname)] \
                or [lease for lease in leases if lease.ifname is None]
        for lease in mine:
            store.release(lease.address)


def _reported_leases(store: Store, request: skel.Request) -> list | None:
    """The attachment's leases found from prevResult, one file read per range set and no listing of
    the directory (so a DEL's cost does not grow with the node's leases), when prevResult reports
    one address in each range set and the attachment holds each of them. None otherwise (no
    prevResult, ranges that no longer parse, or a prevResult that does not match the disk): then
    the directory is read."""
    prev = request.config.get("prevResult")
    if not prev:
        return None
    try:
        range_sets = config.load(request.config, request.args).range_sets
        reported = {parse_address(ip["address"], "prevResult address")
                    for ip in results.from_any(prev, request.version)["ips"]}
    except (CNIError, KeyError, TypeError, ValueError):
        return None
    leases = []
    for range_set in range_sets:
        inside = [address for address in reported if range_set.range_for(address)]
        lease = store.lease(inside[0]) if len(inside) == 1 else None
        if lease is None or not lease.held_by(request.container_id, request.ifname):
            return None
        leases.append(lease)
    return leases


def check(request: skel.Request):
    """The attachment holds a lease in every range set, and those are the addresses prevResult
    reports (when there is one)."""
    conf = config.load(request.config, request.args)
    held = {lease.address for lease in Store(conf.location).leases_of(request.container_id)
            if lease.belongs_to(request.container_id, request.ifname)}
    for range_set in conf.range_sets:
        if not any(range_set.range_for(address) for address in held):
            raise CNIError(CHECK_FAILED, f"container {request.container_id} (ifname {request.ifname}) holds no "
                           f"lease in range set {range_set.index} ({range_set})")
    prev = request.config.get("prevResult")
    if not prev:
        return
    reported = {parse_address(ip["address"], "prevResult address")
                for ip in results.from_any(prev, request.version)["ips"]}
    held, reported = _in_ranges(held, conf.range_sets), _in_ranges(reported, conf.range_sets)
    if held != reported:
        raise CNIError(CHECK_FAILED, f"container {request.container_id} (ifname {request.ifname}) holds "
                       f"{_listing(held)} but prevResult reports {_listing(reported)}")


def status(request: skel.Request):
    """Ready when ADD could succeed: the lease directory is writable and no range set is full
    (ADD needs an address from every range set)."""
    conf = config.load(request.config, request.args)
    store = Store(conf.location)
    reason = store.unwritable_reason()
    if reason:
        raise CNIError(NOT_AVAILABLE, f"lease directory {store.path} is not writable", reason)
    leases = store.leases()
    for range_set in conf.range_sets:
        size = range_set.size()
        if allocator.leased_count(range_set, leases) >= size:
            raise CNIError(NOT_AVAILABLE, f"range set {range_set.index} ({range_set}) is exhausted",
                           f"all {size} addresses are leased")


def gc(request: skel.Request):
    """Release every lease of this network whose attachment is not in cni.dev/valid-attachments."""
    valid = _valid_attachments(request.config)
    store = Store(config.load_location(request.config))
    if not store.exists():
        return
    with store.locked():
        store.rescan()   # the lease files themselves, whatever the index says: GC is also its repair
        for lease in store.leases():
            if not any(lease.belongs_to(container_id, ifname) for container_id, ifname in valid):
                store.release(lease.address)


def _valid_attachments(conf: dict) -> set[tuple[str, str]]:
    key = "cni.dev/valid-attachments"
    attachments = conf.get(key)
    if not isinstance(attachments, list):
        raise config_error(f"GC needs {key} as a list", f"got {attachments!r}")
    valid = set()
    for entry in attachments:
        if not isinstance(entry, dict) or not isinstance(entry.get("containerID"), str) \
                or not isinstance(entry.get("ifname"), str):
            raise config_error(f"invalid entry in {key}", f"expected {{containerID, ifname}}, got {entry!r}")
        valid.add((entry["containerID"], entry["ifname"]))
    return valid


def _in_ranges(addresses, range_sets) -> set:
    return {a for a in addresses if any(s.range_for(a) for s in range_sets)}


def _listing(addresses) -> str:
    return ", ".join(sorted(map(str, addresses))) or "nothing"


PLUGIN = skel.Plugin(name="host-local", add=add, delete=delete, check=check, status=status, gc=gc)
