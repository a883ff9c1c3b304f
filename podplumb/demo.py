"""`podplumb demo`: wire real pods and volumes on this machine, show what was made, remove it all.

The pods' "host" is a namespace of its own, so the demo never touches this machine's interfaces,
routes or firewall."""

import contextlib
import json
import os
import shutil
import tempfile
import uuid

from plugins.host_local.config import Location
from plugins.host_local.store import Store
from podplumb import netns
from podplumb.install import install
from podplumb.runtime import Network

SUBNET4, SUBNET6 = "10.123.0.0/24", "fd00:123::/64"


def _out(*argv, ns) -> str:
    return netns.sh(*argv, ns=ns).stdout


def network_demo(out=print) -> bool:
    tag = uuid.uuid4().hex[:6]
    host, pod_a, pod_b = f"demo-host-{tag}", f"demo-pod-a-{tag}", f"demo-pod-b-{tag}"
    workdir = tempfile.mkdtemp(prefix="podplumb-demo-")
    ok = True
    try:
        with netns.namespaces(host, pod_a, pod_b):
            bin_dir = os.path.join(workdir, "bin")
            install(bin_dir, daemon_socket=None)
            data_dir = os.path.join(workdir, "leases")
            conflist = {"cniVersion": "1.1.0", "name": "demo", "plugins": [{
                "type": "bridge", "bridge": "demo0", "isDefaultGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "dataDir": data_dir,
                         "ranges": [[{"subnet": SUBNET4}], [{"subnet": SUBNET6}]]}}]}
            out(f"== network: bridge + host-local, IPv4 {SUBNET4} and IPv6 {SUBNET6}")
            out(f"   executables installed in {bin_dir}; host namespace {host}")
            net = Network(conflist, bin_dir, host_ns=host)
            pods = {"pod-a": pod_a, "pod-b": pod_b}
            results = {}
            for name, ns in pods.items():
                results[name] = net.add(f"demo-{name}-{tag}", netns.path(ns))
                out(f"-- ADD {name}: " + ", ".join(ip["address"] for ip in results[name]["ips"]))
                for line in _out("ip", "-br", "addr", "show", "eth0", ns=ns).splitlines():
                    out("   " + line)
                for line in (_out("ip", "route", ns=ns) + _out("ip", "-6", "route", ns=ns)).splitlines():
                    out("   route: " + line)
            b = {4 if "." in ip["address"] else 6: ip["address"].split("/")[0] for ip in results["pod-b"]["ips"]}
            gateways = {4 if "." in ip["address"] else 6: ip["gateway"] for ip in results["pod-a"]["ips"]}
            out("-- pings")
            for family in (4, 6):
                for source, target, label in ((pod_a, b[family], "pod-a -> pod-b"),
                                              (pod_a, gateways[family], "pod-a -> gateway"),
                                              (pod_b, gateways[family], "pod-b -> gateway")):
                    reached = netns.ping(source, target)
                    ok &= reached
                    verdict = "ok" if reached else "FAILED"
                    out(f"   IPv{family} {label:17} {target:22} {verdict}")
            for name, ns in pods.items():
                net.check(f"demo-{name}-{tag}", netns.path(ns))
            out("-- CHECK of both pods: ok")
            for name, ns in pods.items():
                net.delete(f"demo-{name}-{tag}", netns.path(ns))
            out("-- DEL of both pods")
            leftovers = [l["ifname"] for l in json.loads(_out("ip", "-j", "link", "show", ns=host))
                         if l["ifname"].startswith("veth")]
            leases = sorted(str(lease.address) for lease in Store(Location("demo", data_dir)).leases())
            pod_links = [l["ifname"] for ns in pods.values() for l in json.loads(_out("ip", "-j", "link", "show", ns=ns))
                         if l["ifname"] != "lo"]
            out(f"   veths left on the host: {leftovers or 'none'}; pod interfaces left: {pod_links or 'none'}; "
                f"leases left: {leases or 'none'}")
            ok &= not leftovers and not leases and not pod_links
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ok


def main() -> int:
    if os.geteuid() != 0:
        print("podplumb demo needs root (network namespaces, loop devices, mounts)")
        return 1
    steps = [("network", network_demo)]
    with contextlib.suppress(ImportError):
        from csi.demo import run_demo
        steps.append(("storage", run_demo))
    with contextlib.suppress(ImportError):
        from podplumb.demo_vxlan import run as vxlan_demo
        steps.append(("overlay", vxlan_demo))
    failed = []
    for name, step in steps:
        try:
            if step(out=print) is False:
                failed.append(name)
        except Exception as e:
            print(f"!! {name} demo failed: {type(e).__name__}: {e}")
            failed.append(name)
        print()
    print("demo finished: " + ("everything worked" if not failed else "FAILED: " + ", ".join(failed)))
    return 1 if failed else 0
