"""bandwidth's configuration: the rates from runtimeConfig.bandwidth (which wins) or the config."""

import dataclasses
import ipaddress
import logging

from cni import limits, netconf
from cni.errors import config_error
from cni.skel import Request

LOG = logging.getLogger("podplumb")

FIELDS = netconf.BANDWIDTH      # the same keys in the plugin's section and in runtimeConfig.bandwidth
MAX_BURST_BITS = 8 * (2**32 - 1)     # the kernel keeps a bucket's size in 32 bits of bytes
MAX_RATE_BITS = 8 * (2**32 - 1)      # and a tbf's rate in 32 bits of bytes per second
MAX_SUBNETS = 256


@dataclasses.dataclass(frozen=True)
class Direction:
    rate: int      # bits/s; 0: not shaped
    burst: int     # bits

    @property
    def shaped(self) -> bool:
        return self.rate > 0 and self.burst > 0


@dataclasses.dataclass(frozen=True)
class Config:
    ingress: Direction       # traffic to the pod
    egress: Direction        # traffic from the pod
    subnets: tuple           # CIDRs of shapedSubnets or unshapedSubnets
    subnets_shaped: bool     # True: only `subnets` are shaped; False: all but `subnets`


def load(request: Request) -> Config:
    entry = request.config
    runtime = request.runtime_config().get("bandwidth")
    if runtime is not None:
        if not isinstance(runtime, dict):
            raise config_error("bandwidth: runtimeConfig.bandwidth must be an object", f"got {runtime!r}")
        entry = runtime
    ingress = _direction(entry, "ingress")
    egress = _direction(entry, "egress")
    shaped, unshaped = _subnets(entry, "shapedSubnets"), _subnets(entry, "unshapedSubnets")
    if shaped and unshaped:
        raise config_error("bandwidth: shapedSubnets and unshapedSubnets exclude each other",
                           "give one of them")
    return Config(ingress, egress, tuple(shaped or unshaped), bool(shaped))


def _direction(entry: dict, name: str) -> Direction:
    rate, burst = _bits(entry, f"{name}Rate"), _bits(entry, f"{name}Burst")
    if burst and not rate:
        raise config_error(f"bandwidth: {name}Burst is set but {name}Rate is not",
                           "a burst needs a rate")
    if burst > MAX_BURST_BITS:
        raise config_error(f"bandwidth: {name}Burst {burst} is too large", f"at most {MAX_BURST_BITS} bits (4 GiB)")
    if rate > MAX_RATE_BITS:
        raise config_error(f"bandwidth: {name}Rate {rate} is too large", f"at most {MAX_RATE_BITS} bits/s")
    if rate and not burst:
        LOG.warning("bandwidth: %sRate without %sBurst shapes nothing (as the reference plugin)", name, name)
    return Direction(rate, burst)


def _bits(entry: dict, key: str) -> int:
    value = entry.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise config_error(f"bandwidth: {key} must be a non-negative integer", f"got {value!r}")
    return value


def _subnets(entry: dict, key: str) -> list[str]:
    value = entry.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise config_error(f"bandwidth: {key} must be a list of CIDRs", f"got {value!r}")
    limits.check_count(value, MAX_SUBNETS, key)
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except (TypeError, ValueError):
            raise config_error(f"bandwidth: invalid subnet in {key}", f"{item!r}") from None
    return out
