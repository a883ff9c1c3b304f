"""The VXLAN overlay demo: three hosts (namespaces on an underlay bridge of their own) with static
peers, a pod on each, every pod pinging the others across the overlay; then everything removed.
Nothing of this machine's own network is touched."""

import tempfile

from podplumb import netns
from podplumb.install import install
from podplumb.overlay import lab
from podplumb.runtime import Network

VNI = 42


def run(out=print) -> bool:
    with tempfile.TemporaryDirectory(prefix="podplumb-vxlan-demo-") as work, \
            lab.data_centre(work, hosts=3, prefix="ppdemo") as dc:
        bin_dir = f"{work}/bin"
        install(bin_dir, daemon_socket=None)
        out(f"underlay {lab.UNDERLAY}: " + ", ".join(f"host{i} {h.underlay_ip}" for i, h in enumerate(dc.hosts, 1)))
        attached = []
        for i, host in enumerate(dc.hosts, 1):
            config = {"cniVersion": "1.1.0", "name": "demo-overlay",
                      "plugins": [lab.static_plugin(host, dc.hosts, VNI)]}
            net = Network(config, bin_dir, host_ns=host.ns)
            pod = dc.add_pod()
            ip = lab.pod_ip(net.add(f"demo-pod{i}", netns.path(pod)))
            attached.append((net, pod, ip))
            out(f"host{i}: subnet {host.subnet}, VTEP ppvx.{VNI} mtu "
                f"{netns.sh('cat', f'/sys/class/net/ppvx.{VNI}/mtu', ns=host.ns).stdout.strip()}, pod{i} {ip}")
        out("host1 overlay routes:\n  " + netns.sh("ip", "-4", "route", "show", "dev", f"ppvx.{VNI}",
                                                     ns=dc.hosts[0].ns).stdout.strip().replace("\n", "\n  "))
        failures = 0
        for a, (_, pod, _) in enumerate(attached, 1):
            for b, (_, _, ip) in enumerate(attached, 1):
                if a != b:
                    ok = netns.ping(pod, ip)
                    failures += not ok
                    out(f"pod{a} -> pod{b} ({ip}): {'ok' if ok else 'FAILED'}")
        for i, (net, pod, _) in enumerate(attached, 1):
            net.delete(f"demo-pod{i}", netns.path(pod))
            net.gc([])
        out("pods deleted, VTEPs garbage-collected, namespaces removed")
    return not failures
