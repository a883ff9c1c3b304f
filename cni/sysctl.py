"""sysctls of this process's network namespace (the host's, for a plugin)."""


def ensure(key: str, value: str):
    """Set `key` (dotted, e.g. net.ipv4.ip_forward) unless it already holds `value`."""
    path = "/proc/sys/" + key.replace(".", "/")
    with open(path) as f:
        if f.read().strip() == value:
            return
    with open(path, "w") as f:
        f.write(value)
