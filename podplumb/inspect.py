"""Read-only views for operators: what host-local holds on disk."""

import os
import sys

from plugins.host_local.config import Location
from plugins.host_local.store import Store


def print_leases(data_dir: str, network: str | None = None, out=print, err=None) -> int:
    """The table on `out`; 1 (and a line on `err`, default stderr) when the named network has no
    lease directory."""
    if network is not None and not os.path.isdir(os.path.join(data_dir, network)):
        (err or _stderr)(f"podplumb leases: no network {network!r}: {os.path.join(data_dir, network)} is not a directory")
        return 1
    try:
        networks = sorted(os.listdir(data_dir)) if network is None else [network]
    except FileNotFoundError:
        out(f"no leases: {data_dir} does not exist")
        return 0
    out(f"{'NETWORK':20} {'ADDRESS':40} {'CONTAINER':66} IFNAME")
    for name in networks:
        if not os.path.isdir(os.path.join(data_dir, name)):
            continue
        for lease in sorted(Store(Location(name, data_dir)).leases(), key=lambda l: (l.address.version, l.address)):
            out(f"{name:20} {str(lease.address):40} {lease.container_id:66} {lease.ifname or '-'}")
    return 0


def _stderr(line: str):
    print(line, file=sys.stderr)
