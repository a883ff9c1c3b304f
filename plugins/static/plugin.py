"""static IPAM: hands out exactly the addresses it is given; keeps no state, so DEL and GC have
nothing to release."""

import ipaddress

from cni import result as results, skel
from cni.errors import CHECK_FAILED, CNIError

from plugins.static import config


def add(request: skel.Request) -> dict:
    conf = config.load(request.config, request.args)
    return results.new(ips=[dict(a) for a in conf.addresses], routes=[dict(r) for r in conf.routes],
                       dns=conf.dns or None)


def check(request: skel.Request):
    """The config still reads, and each of its addresses is among prevResult's."""
    conf = config.load(request.config, request.args)
    prev = request.config.get("prevResult")
    if not prev:
        return
    held = {ipaddress.ip_interface(ip["address"]) for ip in results.from_any(prev, request.version)["ips"]}
    for entry in conf.addresses:
        if ipaddress.ip_interface(entry["address"]) not in held:
            raise CNIError(CHECK_FAILED, f"static address {entry['address']} is not in prevResult")


def status(request: skel.Request):
    config.load(request.config, request.args)


def _nothing(request: skel.Request):
    """DEL and GC: static IPAM holds no leases."""


PLUGIN = skel.Plugin(name="static", add=add, delete=_nothing, check=check, status=status, gc=_nothing)
