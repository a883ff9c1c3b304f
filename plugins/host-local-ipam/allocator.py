"""Choosing addresses: one per range set, round-robin after the address last reserved there."""

import ipaddress
from collections.abc import Iterator

from cni.errors import CNIError, ADDRESS_EXHAUSTED, ADDRESS_IN_USE, config_error
from cni.rollback import Rollback
from plugins.host_local.ranges import Address, Range, RangeSet
from plugins.host_local.store import Lease, Store


def route_requested(range_sets: tuple[RangeSet, ...], requested) -> dict[int, Address]:
    """Which requested address goes to which range set (by index); refused before anything is
    reserved when an address fits no range set or two fall in the same one."""
    chosen = {}
    for address in requested:
        target = next((s for s in range_sets if s.range_for(address)), None)
        if target is None:
            raise CNIError(ADDRESS_IN_USE, f"requested IP {address} is outside every range",
                           "ranges: " + "; ".join(str(s) for s in range_sets))
        if target.index in chosen:
            raise config_error(f"requested IPs {chosen[target.index]} and {address} are both in range set "
                               f"{target.index} ({target})", "one address is allocated per range set")
        chosen[target.index] = address
    return chosen


def leased_count(range_set: RangeSet, leases: list[Lease]) -> int:
    return sum(1 for lease in leases if range_set.allocatable(lease.address))


def candidates(range_set: RangeSet, last: Address | None) -> Iterator[tuple[Range, int]]:
    """Every address the set may hand out, in the reference's order: from just after `last` when
    the set spans it, through the following ranges, wrapping round to `last` itself; otherwise
    from the first range's start. Lazy, so a /64 costs nothing."""
    ranges = range_set.ranges
    first = next((i for i, r in enumerate(ranges) if last is not None and r.spans(last)), None)
    if first is None:
        segments = [(r, r.start, r.end) for r in ranges]
    else:
        order = [ranges[(first + k) % len(ranges)] for k in range(len(ranges))]
        here = order[0]
        segments = [(here, int(last) + 1, here.end)]
        segments += [(r, r.start, r.end) for r in order[1:]]
        segments.append((here, here.start, int(last)))
    for r, low, high in segments:
        excluded = r.excluded()
        for value in range(low, high + 1):
            if value not in excluded:
                yield r, value


class Allocation:
    """The reservations of one ADD, made under the store's lock; each pushes its undo on `undo`."""

    def __init__(self, store: Store, container_id: str, ifname: str, undo: Rollback):
        self.store = store
        self.container_id = container_id
        self.ifname = ifname
        self.undo = undo
        self.held = [lease for lease in store.leases_of(container_id) if lease.held_by(container_id, ifname)]
        self._restorable: set[int] = set()   # range sets whose last_reserved_ip the undo restores

    def get(self, range_set: RangeSet, requested: Address | None) -> dict:
        """The attachment's address in `range_set`, as a result's `ips` entry.

        An attachment that already holds an address in the set gets that address again: a runtime
        that retries an ADD (after a timeout, say) expects the same answer, not an error as the
        reference gives, and certainly not a second address."""
        held = [lease.address for lease in self.held if range_set.range_for(lease.address)]
        if requested is not None:
            self._take_requested(range_set, requested, held)
            return _ip_config(range_set, requested)
        if held:
            return _ip_config(range_set, held[0])
        return _ip_config(range_set, self._take_next_free(range_set))

    def _take_requested(self, range_set: RangeSet, requested: Address, held: list[Address]):
        if held:
            if requested in held:
                return
            raise CNIError(ADDRESS_IN_USE, f"container {self.container_id} (ifname {self.ifname}) already holds "
                           f"{held[0]} in range set {range_set.index}, not the requested {requested}",
                           "delete the attachment first to change its address")
        reason = range_set.range_for(requested).why_not_allocatable(requested)
        if reason:
            raise CNIError(ADDRESS_IN_USE, f"requested IP {requested} is {reason}")
        holder = self.store.lease(requested)
        if holder or not self._reserve(range_set, requested):
            raise CNIError(ADDRESS_IN_USE, f"requested IP {requested} is already held by "
                           f"{holder.holder() if holder else 'another container'}")

    def _take_next_free(self, range_set: RangeSet) -> Address:
        """The first free candidate. The leases are not counted first: a free one comes within
        (leases + 1) candidates, and a full set has no more candidates than leases."""
        for r, value in candidates(range_set, self._last_reserved(range_set.index)):
            address = r.address(value)
            if not self.store.taken(address) and self._reserve(range_set, address):
                return address
        raise CNIError(ADDRESS_EXHAUSTED, f"no free address in range set {range_set.index} ({range_set})",
                       f"all {range_set.size()} addresses are leased")

    def _last_reserved(self, index: int) -> Address | None:
        text = self.store.read_last_reserved(index)
        try:
            return ipaddress.ip_address(text.strip()) if text else None
        except ValueError:
            return None

    def _reserve(self, range_set: RangeSet, address: Address) -> bool:
        index = range_set.index
        if index not in self._restorable:
            previous = self.store.read_last_reserved(index)
            self.undo.push(f"last_reserved_ip.{index}", lambda: self.store.write_last_reserved(index, previous))
            self._restorable.add(index)
        if not self.store.reserve(address, self.container_id, self.ifname):
            return False
        self.undo.push(f"lease {address}", lambda: self.store.release(address))
        self.store.write_last_reserved(index, str(address))
        return True


def _ip_config(range_set: RangeSet, address: Address) -> dict:
    r = range_set.range_for(address)
    return {"address": r.interface(int(address)), "gateway": str(r.address(r.gateway))}
