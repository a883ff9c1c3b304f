"""resolv.conf -> a result's `dns` object."""

from cni import limits


def parse(path: str) -> dict:
    """`nameserver` lines accumulate, `domain` keeps the last, `search` and `options` accumulate
    their words; comments (# or ;) and unknown keywords are skipped."""
    lines = limits.read_small_file(path, "resolvConf").decode("utf-8", errors="replace").splitlines()
    dns = {}
    for line in lines:
        words = line.split()
        if len(words) < 2 or words[0][0] in "#;":
            continue
        keyword, values = words[0], words[1:]
        if keyword == "nameserver":
            dns.setdefault("nameservers", []).append(values[0])
        elif keyword == "domain":
            dns["domain"] = values[0]
        elif keyword in ("search", "options"):
            dns.setdefault(keyword, []).extend(values)
    return dns
