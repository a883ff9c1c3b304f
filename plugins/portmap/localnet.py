"""route_localnet: lets packets from 127.0.0.0/8, once DNAT'ed to a container, leave through the
host interface that routes to it (and their replies come back). IPv4 only: IPv6 has no equivalent."""

import os
import re

from cni import log, rtnl


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.@\-]{1,15}$")


def route_interface(address: str) -> str | None:
    """The interface this (host) namespace routes `address` through, None if unknown: a route get
    and a link get over rtnetlink."""
    sock = rtnl.Socket()
    try:
        route = sock.get(rtnl.RTM_GETROUTE, rtnl.RTMSG.pack(rtnl.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0)
                         + rtnl.ip(rtnl.RTA_DST, address))
        oif = rtnl.as_u32(rtnl.parse(route[rtnl.RTMSG.size:]).get(rtnl.RTA_OIF))
        link = sock.get(rtnl.RTM_GETLINK, rtnl.link_request(oif)) if oif else None
        dev = rtnl.as_string(rtnl.parse(link[rtnl.IFINFOMSG.size:]).get(rtnl.IFLA_IFNAME)) if link else None
    except rtnl.KernelError:
        return None           # no route to it
    except (OSError, ValueError, IndexError) as e:
        log.logger().warning("portmap: cannot find the interface routing to %s: %s", address, e)
        return None
    finally:
        sock.close()
    if dev and not _SAFE_NAME.fullmatch(dev):
        log.logger().warning("portmap: not enabling route_localnet on oddly named interface %r", dev)
        return None
    return dev or None


def _path(ifname: str) -> str:
    return f"/proc/sys/net/ipv4/conf/{ifname}/route_localnet"


def enabled(ifname: str) -> bool:
    try:
        with open(_path(ifname)) as f:
            return f.read().strip() != "0"
    except OSError:
        return False


def set_enabled(ifname: str, on: bool):
    with open(_path(ifname), "w") as f:
        f.write("1" if on else "0")


def reset(ifname: str):
    """Turn route_localnet off again; the interface may be gone already."""
    if os.path.exists(_path(ifname)):
        try:
            set_enabled(ifname, False)
        except OSError as e:
            log.logger().warning("portmap: cannot turn route_localnet off on %s: %s", ifname, e)
