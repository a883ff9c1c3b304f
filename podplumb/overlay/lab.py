"""A data centre in network namespaces, for the overlay's demo, benchmark and tests: hosts joined
only by an underlay bridge that lives in a namespace of its own, and pods as further namespaces.
Nothing of this machine's own network is touched; `close()` deletes every namespace made."""

import contextlib
import dataclasses
import ipaddress
import os
import subprocess
import uuid

UNDERLAY = ipaddress.ip_network("192.168.77.0/24")
UNDERLAY_ROUTER = "192.168.77.254"


def sh(*argv, ns: str | None = None, timeout: float = 30) -> str:
    if ns:
        argv = ("ip", "netns", "exec", ns) + argv
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc.stdout


@dataclasses.dataclass
class Host:
    ns: str
    underlay_ip: str
    subnet: str                   # a pod subnet for it, for static configs
    state_dir: str                # the vxlan plugin's stateDir on this host
    data_dir: str                 # host-local's dataDir on this host

    @property
    def path(self) -> str:
        return f"/run/netns/{self.ns}"


class DataCentre:
    def __init__(self, work_dir: str, prefix: str = "ppv", underlay_mtu: int = 1500):
        self.work_dir = work_dir
        self.prefix = prefix
        self.mtu = underlay_mtu
        self.namespaces = []
        self.hosts = []
        try:
            self.underlay = self._netns("ul")
            sh("ip", "link", "add", "ul0", "type", "bridge", ns=self.underlay)
            sh("ip", "addr", "add", f"{UNDERLAY_ROUTER}/{UNDERLAY.prefixlen}", "dev", "ul0", ns=self.underlay)
            sh("ip", "link", "set", "ul0", "up", ns=self.underlay)
        except BaseException:
            self.close()
            raise

    def _netns(self, role: str) -> str:
        name = f"{self.prefix}{role}-{uuid.uuid4().hex[:10]}"
        self.namespaces.append(name)
        sh("ip", "netns", "add", name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        return name

    def add_host(self) -> Host:
        number = len(self.hosts) + 1
        ns = self._netns(f"h{number}")
        port, mtu = f"u{number}", str(self.mtu)
        sh("ip", "link", "add", port, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", ns,
           ns=self.underlay)
        sh("ip", "link", "set", port, "master", "ul0", "up", ns=self.underlay)
        address = str(UNDERLAY.network_address + number)
        sh("ip", "addr", "add", f"{address}/{UNDERLAY.prefixlen}", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "route", "add", "default", "via", UNDERLAY_ROUTER, ns=ns)
        host_dir = os.path.join(self.work_dir, f"host{number}")
        host = Host(ns=ns, underlay_ip=address, subnet=f"10.77.{number}.0/24",
                    state_dir=os.path.join(host_dir, "state"), data_dir=os.path.join(host_dir, "ipam"))
        self.hosts.append(host)
        return host

    def add_pod(self) -> str:
        return self._netns("p")

    def close(self):
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.namespaces.clear()


@contextlib.contextmanager
def data_centre(work_dir: str, hosts: int, prefix: str = "ppv", underlay_mtu: int = 1500):
    dc = DataCentre(work_dir, prefix, underlay_mtu)
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
