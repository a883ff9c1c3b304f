"""Address ranges: parsing and validating subnets, ranges and range sets.

Addresses are handled as (family, int) inside a range so that IPv4 and IPv6 never compare by
accident and huge IPv6 ranges cost nothing to walk lazily. Other plugins may use `parse_cidr`,
`parse_address` and `parse_range_set` too: they only depend on the standard library.
"""

import ipaddress

from cni.errors import config_error

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text, what: str) -> Address:
    """An address, also accepted with a prefix length ('10.1.0.5/24'), which is ignored."""
    if not isinstance(text, str):
        raise config_error(f"{what} must be a string", f"got {text!r}")
    try:
        return ipaddress.ip_interface(text.strip()).ip
    except ValueError:
        raise config_error(f"{what} {text!r} is not an IP address") from None


def parse_cidr(text, what: str) -> Network:
    """A network in CIDR notation whose host bits are all zero."""
    if not isinstance(text, str):
        raise config_error(f"{what} must be a string", f"got {text!r}")
    try:
        interface = ipaddress.ip_interface(text.strip())
    except ValueError:
        raise config_error(f"{what} {text!r} is not a valid CIDR") from None
    if "/" not in text:
        raise config_error(f"{what} {text!r} is not a valid CIDR", "the prefix length is missing")
    if interface.ip != interface.network.network_address:
        raise config_error(f"{what} {text} has host bits set",
                           f"the network address of a /{interface.network.prefixlen} is "
                           f"{interface.network.network_address}")
    return interface.network


class Range:
    __slots__ = ("subnet", "start", "end", "gateway")

    def __init__(self, subnet: Network, start: int, end: int, gateway: int):
        self.subnet = subnet
        self.start = start
        self.end = end
        self.gateway = gateway

    @property
    def family(self) -> int:
        return self.subnet.version

    def address(self, value: int) -> Address:
        return ipaddress.IPv4Address(value) if self.family == 4 else ipaddress.IPv6Address(value)

    def interface(self, value: int) -> str:
        """The address with the subnet's prefix length, as a result carries it."""
        return f"{self.address(value)}/{self.subnet.prefixlen}"

    def spans(self, address: Address) -> bool:
        """Between rangeStart and rangeEnd (inclusive), whether it may be handed out or not."""
        return address.version == self.family and self.start <= int(address) <= self.end

    def excluded(self) -> set[int]:
        """Addresses inside the subnet that are never handed out."""
        out = {self.gateway, int(self.subnet.network_address)}
        if self.family == 4:
            out.add(int(self.subnet.broadcast_address))
        return out

    def why_not_allocatable(self, address: Address) -> str | None:
        if not self.spans(address):
            return f"outside {self}"
        value = int(address)
        if value == self.gateway:
            return f"the gateway of {self.subnet}"
        if value == int(self.subnet.network_address):
            return f"the network address of {self.subnet}"
        if self.family == 4 and value == int(self.subnet.broadcast_address):
            return f"the broadcast address of {self.subnet}"
        return None

    def size(self) -> int:
        """How many addresses this range can hand out."""
        return self.end - self.start + 1 - sum(1 for v in self.excluded() if self.start <= v <= self.end)

    def __str__(self):
        return f"{self.address(self.start)}-{self.address(self.end)}"


class RangeSet:
    """Ranges of one family; an attachment gets one address from each range set."""
    __slots__ = ("index", "ranges")

    def __init__(self, index: int, ranges: tuple[Range, ...]):
        self.index = index
        self.ranges = ranges

    def range_for(self, address: Address) -> Range | None:
        return next((r for r in self.ranges if r.spans(address)), None)

    def allocatable(self, address: Address) -> bool:
        found = self.range_for(address)
        return found is not None and found.why_not_allocatable(address) is None

    def size(self) -> int:
        return sum(r.size() for r in self.ranges)

    def overlaps(self, other: "RangeSet") -> bool:
        return any(_overlap(a, b) for a in self.ranges for b in other.ranges)

    def __str__(self):
        return ",".join(str(r) for r in self.ranges)


def _overlap(a: Range, b: Range) -> bool:
    return a.family == b.family and a.start <= b.end and b.start <= a.end


def parse_range(spec, where: str) -> Range:
    """One range: `subnet` (required), `rangeStart`, `rangeEnd`, `gateway`, with the defaults of
    the reference plugin: gateway = first address, start = first address after the network
    address, end = last address before the broadcast (IPv4) or the last address (IPv6)."""
    if not isinstance(spec, dict):
        raise config_error(f"{where} must be an object", f"got {spec!r}")
    if "subnet" not in spec:
        raise config_error(f"{where} has no subnet")
    subnet = parse_cidr(spec["subnet"], f"{where}: subnet")
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise config_error(f"{where}: subnet {subnet} is too small to allocate from",
                           f"the longest usable prefix is /{subnet.max_prefixlen - 2}")
    network = int(subnet.network_address)
    last = int(subnet.broadcast_address)

    def member(key: str, default: int) -> int:
        if spec.get(key) is None:
            return default
        address = parse_address(spec[key], f"{where}: {key}")
        if address not in subnet:
            raise config_error(f"{where}: {key} {address} is not in subnet {subnet}")
        return int(address)

    gateway = member("gateway", network + 1)
    start = member("rangeStart", network + 1)
    end = member("rangeEnd", last - 1 if subnet.version == 4 else last)
    found = Range(subnet, start, end, gateway)
    if gateway == network or (subnet.version == 4 and gateway == last):
        raise config_error(f"{where}: gateway {found.address(gateway)} is not a host address of {subnet}",
                           "the network and broadcast addresses cannot be a gateway")
    if start > end:
        raise config_error(f"{where}: rangeStart {found.address(start)} is after rangeEnd {found.address(end)}")
    if found.size() == 0:
        raise config_error(f"{where}: range {found} has no address to hand out",
                           "the gateway, network and broadcast addresses are never handed out")
    return found


def parse_range_set(spec, index: int, where: str) -> RangeSet:
    if not isinstance(spec, list) or not spec:
        raise config_error(f"{where} must be a non-empty list of ranges", f"got {spec!r}")
    ranges = tuple(parse_range(r, f"{where}, range {i}" if len(spec) > 1 else where)
                   for i, r in enumerate(spec))
    if len({r.family for r in ranges}) > 1:
        raise config_error(f"{where} mixes IPv4 and IPv6 ranges", "use one range set per address family")
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            if _overlap(a, b):
                raise config_error(f"{where}: ranges {a} and {b} overlap")
    return RangeSet(index, ranges)
