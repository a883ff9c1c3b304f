"""A veth pair from a pod's namespace to the host, as the main plugins (bridge, ptp) make, remove and
check it. The host end's name is random; a plugin finds it again through prevResult."""

import os

from cni import chained, netlink
from cni.errors import CHECK_FAILED, CNIError, LINK_CONFLICT


def create(host: netlink.Namespace, netns: str, ifname: str, mtu: int = 0, mac: str | None = None) -> str:
    """A veth pair: a random host-side name, the pod side born as `ifname` inside `netns`. Returns the
    host side's name."""
    for _ in range(5):
        host_name = "veth" + os.urandom(4).hex()
        if host.add_veth(host_name, ifname, netns, mtu=mtu, peer_mac=mac):
            return host_name
        if host.link(host_name) is None:   # the taken name is the pod's, not our random one
            raise CNIError(LINK_CONFLICT, f"interface {ifname} already exists in {netns}")
    raise CNIError(LINK_CONFLICT, "cannot find a free host-side veth name")


def host_side_names(prev: dict | None) -> list[str]:
    """The names prevResult gives to interfaces outside the sandbox, in its order."""
    return [i["name"] for i in (prev or {}).get("interfaces", [])
            if not i.get("sandbox") and isinstance(i.get("name"), str) and i["name"]]


def remove(host_name: str | None, is_ours, netns: str, ifname: str):
    """Delete the pair. Deleting either end removes both: the host end named by prevResult (when
    `is_ours(host, link)` accepts it) needs no trip into the pod's namespace, which may be gone
    already (CNI_NETNS is empty then); else the pod end is deleted inside `netns`."""
    with netlink.Namespace() as host:
        link = host.link(host_name) if host_name else None
        if link is not None and link.kind == "veth" and is_ours(host, link) and host.delete_link(host_name):
            return
    if netns:
        try:
            with netlink.Namespace(netns) as container:
                container.delete_link(ifname)
        except CNIError:
            pass  # the namespace is gone, and the pair with it


def check_failed(msg: str) -> CNIError:
    return CNIError(CHECK_FAILED, msg)


def check_pod_link(container: netlink.Namespace, prev: dict, ifname: str, netns: str) -> netlink.Link:
    """The pod's end of the pair, as prevResult describes it (name, veth, MAC)."""
    index = chained.interface_index(prev, ifname)
    if index is None:
        raise check_failed(f"prevResult has no interface {ifname} in a sandbox")
    pod = container.link(ifname)
    if pod is None:
        raise check_failed(f"interface {ifname} is missing from {netns}")
    if pod.kind != "veth":
        raise check_failed(f"{ifname} is a {pod.kind or 'non-veth'} link, not a veth")
    mac = prev["interfaces"][index].get("mac")
    if mac and pod.mac != mac.lower():
        raise check_failed(f"{ifname} has MAC {pod.mac}, prevResult says {mac}")
    return pod
