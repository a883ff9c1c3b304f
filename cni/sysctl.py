"""sysctls of this process's network namespace (the host's, for a plugin), or of a pod's."""


def _path(key: str) -> str:
    """Dotted (net.ipv4.ip_forward) or, when a part such as an interface name may hold a dot,
    slashed (net/ipv4/conf/eth0.5/arp_notify)."""
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


def ensure(key: str, value: str):
    """Set `key` (dotted, e.g. net.ipv4.ip_forward) unless it already holds `value`."""
    path = _path(key)
    with open(path) as f:
        if f.read().strip() == value:
            return
    with open(path, "w") as f:
        f.write(value)


def enable_forwarding(versions):
    """IP forwarding on in this namespace for each IP version (4, 6) in `versions`."""
    if 4 in versions:
        ensure("net.ipv4.ip_forward", "1")
    if 6 in versions:
        ensure("net.ipv6.conf.all.forwarding", "1")


def read_in(netns: str, key: str) -> str:
    """`key`'s value in the network namespace at `netns` (net.* keys are per namespace)."""
    from cni import netlink    # its threads and ctypes: only for callers that reach into a pod

    def read():
        with open(_path(key)) as f:
            return f.read().strip()
    return netlink.run_in(netns, read)


def write_in(netns: str, key: str, value: str):
    from cni import netlink

    def write():
        with open(_path(key), "w") as f:
            f.write(value)
    netlink.run_in(netns, write)
