"""This host's subnet lease as the overlay registry hands it to the plugin (like flannel's subnet.env):
a small JSON file, replaced atomically."""

import dataclasses
import ipaddress
import json

from cni import files
from cni.errors import CNIError, NOT_AVAILABLE


@dataclasses.dataclass(frozen=True)
class HostLease:
    network: str
    subnet: ipaddress.IPv4Network
    underlay_ip: str


def read(path: str) -> HostLease:
    """The lease; NOT_AVAILABLE when the registry has not written one (yet) or it is unreadable."""
    try:
        with open(path) as f:
            data = json.load(f)
        return HostLease(network=data["network"], subnet=ipaddress.IPv4Network(data["subnet"]),
                         underlay_ip=str(ipaddress.IPv4Address(data["underlayIP"])))
    except FileNotFoundError:
        raise CNIError(NOT_AVAILABLE, f"no subnet lease at {path}",
                       "the config has no 'subnet': is the overlay registry (podplumb overlay) running?") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CNIError(NOT_AVAILABLE, f"unreadable subnet lease {path}", f"{type(e).__name__}: {e}") from None


def write(path: str, lease: HostLease):
    files.replace(path, json.dumps({"network": lease.network, "subnet": str(lease.subnet),
                                    "underlayIP": lease.underlay_ip}) + "\n")
