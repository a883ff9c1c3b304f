"""A data centre in network namespaces, for the overlay's demo, benchmark and tests: hosts joined
only by an underlay bridge that lives in a namespace of its own, and pods as further namespaces.
Nothing of this machine's own network is touched; `close()` deletes every namespace made."""

import contextlib
import dataclasses
import ipaddress
import os
import uuid

from podplumb import netns

UNDERLAY = ipaddress.ip_network("192.168.77.0/24")
UNDERLAY_ROUTER = "192.168.77.254"


@dataclasses.dataclass
class Host:
    ns: str
    underlay_ip: str
    subnet: str                   # a pod subnet for it, for static configs
    state_dir: str                # the vxlan plugin's stateDir on this host
    data_dir: str                 # host-local's dataDir on this host

    @property
    def path(self) -> str:
        return netns.path(self.ns)


class DataCentre:
    def __init__(self, work_dir: str, prefix: str = "ppv"):
        self.work_dir = work_dir
        self.prefix = prefix
        self.namespaces = []
        self.hosts = []
        try:
            self.underlay = self._netns("ul")
            netns.sh("ip", "link", "add", "ul0", "type", "bridge", ns=self.underlay)
            netns.sh("ip", "addr", "add", f"{UNDERLAY_ROUTER}/{UNDERLAY.prefixlen}", "dev", "ul0", ns=self.underlay)
            netns.sh("ip", "link", "set", "ul0", "up", ns=self.underlay)
        except BaseException:
            self.close()
            raise

    def _netns(self, role: str) -> str:
        name = f"{self.prefix}{role}-{uuid.uuid4().hex[:10]}"
        self.namespaces.append(name)
        netns.add(name)
        return name

    def add_host(self) -> Host:
        number = len(self.hosts) + 1
        ns = self._netns(f"h{number}")
        port = f"u{number}"
        netns.sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
                 ns=self.underlay)
        netns.sh("ip", "link", "set", port, "master", "ul0", "up", ns=self.underlay)
        address = str(UNDERLAY.network_address + number)
        netns.sh("ip", "addr", "add", f"{address}/{UNDERLAY.prefixlen}", "dev", "eth0", ns=ns)
        netns.sh("ip", "link", "set", "eth0", "up", ns=ns)
        netns.sh("ip", "route", "add", "default", "via", UNDERLAY_ROUTER, ns=ns)
        host_dir = os.path.join(self.work_dir, f"host{number}")
        host = Host(ns=ns, underlay_ip=address, subnet=f"10.77.{number}.0/24",
                    state_dir=os.path.join(host_dir, "state"), data_dir=os.path.join(host_dir, "ipam"))
        self.hosts.append(host)
        return host

    def add_pod(self) -> str:
        return self._netns("p")

    def close(self):
        for name in reversed(self.namespaces):
            netns.delete(name)
        self.namespaces.clear()


@contextlib.contextmanager
def data_centre(work_dir: str, hosts: int, prefix: str = "ppv"):
    dc = DataCentre(work_dir, prefix)
    try:
        for _ in range(hosts):
            dc.add_host()
        yield dc
    finally:
        dc.close()


def static_plugin(host: Host, peers, vni: int, bridge: str = "cni0") -> dict:
    """The vxlan section of `host`'s network config with static peers (`peers` may include `host`)."""
    return {"type": "vxlan", "vni": vni, "bridge": bridge, "stateDir": host.state_dir,
            "subnet": host.subnet, "peers": [{"underlayIP": p.underlay_ip, "subnet": p.subnet} for p in peers],
            "ipam": {"type": "host-local", "dataDir": host.data_dir}}


def pod_ip(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]
