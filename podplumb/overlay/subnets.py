"""Subnet leases in etcd: one key per host subnet, `<prefix><address>-<length>`, holding the owner's
record and bound to the owner's etcd lease (it vanishes when the owner stops renewing).

A claim is an etcd transaction that creates the key only if it is absent, so no two hosts ever
hold the same subnet; a host may take over a key that still carries its own record (a restart
within the TTL).
"""

import dataclasses
import ipaddress
import json
import logging

from podplumb.overlay.etcd import Client

LOG = logging.getLogger("podplumb")
MAX_ATTEMPTS = 64


class ClaimError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class HostRecord:
    node: str
    underlay_ip: str
    vtep_mac: str

    def encode(self) -> bytes:
        return json.dumps({"node": self.node, "underlayIP": self.underlay_ip, "vtepMAC": self.vtep_mac},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes) -> "HostRecord | None":
        try:
            data = json.loads(value)
            return cls(node=str(data["node"]), underlay_ip=str(ipaddress.IPv4Address(data["underlayIP"])),
                       vtep_mac=str(data["vtepMAC"]).lower())
        except (ValueError, KeyError, TypeError):
            return None


def key_for(prefix: str, subnet: ipaddress.IPv4Network) -> str:
    return f"{prefix}{subnet.network_address}-{subnet.prefixlen}"


def subnet_of(prefix: str, key: str) -> ipaddress.IPv4Network | None:
    address, _, length = key[len(prefix):].partition("-")
    try:
        return ipaddress.IPv4Network(f"{address}/{length}")
    except ValueError:
        return None


def claim(client: Client, prefix: str, record: HostRecord, lease: int, *, preferred=(), required=False,
          cidr: ipaddress.IPv4Network | None = None, length: int = 24) -> ipaddress.IPv4Network:
    """A subnet for this host, bound to `lease`: a `preferred` one when free or already ours (a
    `required` one or nothing), else the first free `length` subnet of `cidr`."""
    for subnet in preferred:
        holder = _take(client, key_for(prefix, subnet), record, lease)
        if holder is None:
            return subnet
        if required:
            raise ClaimError(f"subnet {subnet} is held by {holder}")
        LOG.warning("remembered subnet %s is now held by %s: claiming another", subnet, holder)
    if cidr is None:
        raise ClaimError("no subnet to claim: the config has no cluster CIDR")
    for _ in range(MAX_ATTEMPTS):
        _, held = client.range_prefix(prefix)
        taken = [s for s in (subnet_of(prefix, kv.key) for kv in held) if s is not None]
        free = next((s for s in cidr.subnets(new_prefix=length) if not any(s.overlaps(t) for t in taken)), None)
        if free is None:
            raise ClaimError(f"no free /{length} left in {cidr}: {len(taken)} subnets are held")
        if _take(client, key_for(prefix, free), record, lease) is None:
            return free
    raise ClaimError(f"gave up after {MAX_ATTEMPTS} contended claims in {cidr}")


def _take(client: Client, key: str, record: HostRecord, lease: int) -> str | None:
    """Claim `key`; None on success, else a description of the holder."""
    existing = client.put_if_absent(key, record.encode(), lease)
    if existing is None:
        return None
    holder = HostRecord.decode(existing.value)
    if holder is not None and holder.node == record.node:
        if client.put_if_value(key, existing.value, record.encode(), lease):
            return None
    return f"node {holder.node} ({holder.underlay_ip})" if holder else "an unreadable record"
