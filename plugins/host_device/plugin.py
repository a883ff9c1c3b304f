"""host-device: a link of the node moves into the pod, renamed to CNI_IFNAME; DEL gives it back under
its original name. The original name travels with the link (its ifalias, as the reference keeps it),
so DEL needs no state of ours and works after any restart, or after an ADD by the reference."""

import glob
import logging
import os

from cni import addressing, invoke, netlink, result as results, skel
from cni.errors import CNIError, CHECK_FAILED, UNKNOWN_CONTAINER, config_error
from cni.rollback import Rollback

from plugins.host_device import config

LOG = logging.getLogger("podplumb")

SYS_PCI = "/sys/bus/pci/devices"
USERSPACE_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio")   # DPDK: the device has no kernel netdev
# Where the calling thread's netlink socket lives: the namespace a link goes back to.
HOST_NETNS = "/proc/thread-self/ns/net"


def add(request: skel.Request) -> dict:
    conf = config.load(request)
    with netlink.Namespace(request.netns) as pod, netlink.Namespace() as host, Rollback() as undo:
        pod.require_absent(request.ifname)
        device = _find(conf, host)
        old_alias = host.alias(device.index)
        host.set_link(device.index, ifalias=device.name)
        undo.push("alias", lambda: _restore_alias(host, device.name, old_alias))
        # A failed move may leave the link in the pod under its host name (see _move_out).
        undo.push("move", lambda: _move_out(pod, request.ifname) or _move_out(pod, device.name))
        host.move_link(device.index, request.netns, request.ifname)
        link = pod.link(request.ifname)
        ips, routes, dns = invoke.add_optional_ipam(request, undo)
        addressing.configure(pod, link.index, ips, routes, dad=True)
        link = pod.link(index=link.index)
    interface = {"name": request.ifname, "mac": link.mac, "sandbox": request.netns}
    return results.new([interface], ips, routes, conf.dns or dns)


def _find(conf: config.HostDeviceConfig, host: netlink.Namespace) -> netlink.Link:
    """The node link the config names, in the namespace the plugin runs in."""
    if conf.device:
        link = host.link(conf.device)
    elif conf.hwaddr:
        link = next((l for l in host.links() if l.mac == conf.hwaddr), None)
    elif conf.kernelpath:
        link = _first_link(host, os.path.join(conf.kernelpath, "net"))
    else:
        link = _first_link(host, _pci_net_dir(conf.pci_address))
    if link is None:
        raise config_error(f"no link for {conf.selector()} in the host's network namespace",
                           "it does not exist, or it is in a pod's namespace already")
    if link.name == "lo":
        raise config_error("the loopback link cannot be moved into a pod")
    return link


def _first_link(host: netlink.Namespace, net_dir: str) -> netlink.Link | None:
    """The first link of this namespace among the devices sysfs lists in `net_dir`."""
    try:
        names = sorted(os.listdir(net_dir))
    except OSError:
        return None
    for name in names:
        link = host.link(name) if name != "lo" else None
        if link is not None:
            return link
    return None


def _pci_net_dir(address: str) -> str:
    device = os.path.join(SYS_PCI, address)
    driver = os.path.basename(os.path.realpath(os.path.join(device, "driver")))
    if driver in USERSPACE_DRIVERS:
        raise config_error(f"PCI device {address} is bound to {driver}",
                           "a device given to a userspace (DPDK) driver has no link to move; podplumb does not "
                           "pass such devices through")
    net_dir = os.path.join(device, "net")
    if not os.path.isdir(net_dir):
        net_dir = next(iter(sorted(glob.glob(os.path.join(device, "virtio*", "net")))), net_dir)
    return net_dir


def _restore_alias(host: netlink.Namespace, name: str, alias: str | None):
    link = host.link(name)
    if link is not None:
        host.set_link(link.index, ifalias=alias or "")


def _move_out(pod: netlink.Namespace, ifname: str) -> bool:
    """Give the pod's link back to the host under the name kept in its alias; False when the pod
    has no such link. A link without the alias was not moved in by host-device: it stays."""
    link = pod.link(ifname)
    if link is None:
        return False
    original = pod.alias(link.index)
    if not original:
        LOG.warning("%s in %s has no alias naming its original: not a host device, left alone", ifname, pod.path)
        return False
    pod.set_link(link.index, state="down")
    # Renamed first: the kernel moves a link under its current name and renames it afterwards, so a
    # move that asks for a name taken in the host would leave the link there under the pod's name.
    # Moved under the name it already has, it either arrives as `original` or stays where it is.
    renamed = original != ifname and _try_rename(pod, link.index, original)
    try:
        pod.move_link(link.index, HOST_NETNS, original, where="the host's namespace")
    except CNIError:
        if renamed:
            pod.set_link(link.index, ifname=ifname)
        if link.up:
            pod.set_link(link.index, state="up")      # as it was, so that a later DEL can try again
        raise
    return True


def _try_rename(ns: netlink.Namespace, index: int, name: str) -> bool:
    try:
        ns.set_link(index, ifname=name)
    except CNIError:      # the pod has a link of that name itself
        return False
    return True


def delete(request: skel.Request):
    config.load(request)
    invoke.delegate_if_configured(request, "DEL")
    if not request.netns:
        return      # the runtime lost the pod's namespace: the kernel gave physical links back to the root namespace
    try:
        with netlink.Namespace(request.netns) as pod:
            _move_out(pod, request.ifname)
    except CNIError as e:
        if e.code != UNKNOWN_CONTAINER:
            raise


def check(request: skel.Request):
    config.load(request)
    invoke.delegate_if_configured(request, "CHECK")
    want = addressing.expected(request)
    with netlink.Namespace(request.netns) as pod:
        link = pod.link(request.ifname)
        if link is None:
            raise CNIError(CHECK_FAILED, f"interface {request.ifname} is missing from {request.netns}")
        if not pod.alias(link.index):
            raise CNIError(CHECK_FAILED, f"{request.ifname} carries no alias naming its host device")
        addressing.check_interface(pod, link, want)


def status(request: skel.Request):
    config.load(request)
    invoke.delegate_if_configured(request, "STATUS")


def gc(request: skel.Request):
    config.load(request)
    invoke.delegate_if_configured(request, "GC")


PLUGIN = skel.Plugin(name="host-device", add=add, delete=delete, check=check, status=status, gc=gc,
                     config_fields=config.FIELDS)
