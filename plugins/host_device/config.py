"""The host-device plugin's config: which node link to hand to the pod, chosen by exactly the
reference's keys (`device`, `hwaddr`, `kernelpath`, `pciBusID`, or runtimeConfig `deviceID`)."""

import dataclasses
import os
import re

from cni import fields
from cni.errors import config_error
from cni.skel import Request

# The plugin's own top-level keys, for cni.netconf.
FIELDS = dict.fromkeys(("device", "hwaddr", "kernelpath", "pciBusID"))
_PCI_ADDRESS = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")
_HWADDR = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


@dataclasses.dataclass(frozen=True)
class HostDeviceConfig:
    network: str
    device: str | None = None
    hwaddr: str | None = None
    kernelpath: str | None = None
    pci_address: str | None = None
    dns: dict | None = None

    def selector(self) -> str:
        """How the device is named, for messages."""
        for key, value in (("device", self.device), ("hwaddr", self.hwaddr), ("kernelpath", self.kernelpath),
                           ("pciBusID", self.pci_address)):
            if value:
                return f"{key} {value}"
        return "?"


def load(request: Request) -> HostDeviceConfig:
    raw = request.config
    values = {}
    if raw.get("device"):
        values["device"] = fields.ifname(raw, "device", "")
    hwaddr = raw.get("hwaddr")
    if hwaddr:
        if not isinstance(hwaddr, str) or not _HWADDR.fullmatch(hwaddr):
            raise config_error(f"invalid hwaddr {hwaddr!r}", "expected six hex pairs like 0a:58:0a:01:00:05")
        values["hwaddr"] = hwaddr.lower()
    kernelpath = raw.get("kernelpath")
    if kernelpath:
        if (not isinstance(kernelpath, str) or not kernelpath.startswith("/sys/devices/")
                or os.path.normpath(kernelpath) != kernelpath.rstrip("/")):
            raise config_error(f"invalid kernelpath {kernelpath!r}",
                               "an absolute, normalised path under /sys/devices/")
        values["kernelpath"] = kernelpath.rstrip("/")
    pci = request.runtime_config().get("deviceID") or raw.get("pciBusID")
    if pci:
        if not isinstance(pci, str) or not _PCI_ADDRESS.fullmatch(pci):
            raise config_error(f"invalid PCI address {pci!r}", "expected domain:bus:device.function, e.g. 0000:00:19.0")
        values["pci_address"] = pci.lower()
    if not values:
        raise config_error('specify either "device", "hwaddr", "kernelpath" or "pciBusID"')
    fields.ipam_type(raw)      # an invalid ipam section fails here, before anything is made
    dns = raw.get("dns")
    return HostDeviceConfig(network=fields.network_name(raw),
                            dns=dns if isinstance(dns, dict) and dns else None, **values)
