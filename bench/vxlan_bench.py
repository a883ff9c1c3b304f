"""VXLAN overlay benchmark: pod-to-pod TCP throughput across the overlay against host-to-host
throughput over the underlay it rides on, measured in the same run (iperf3), reported as a ratio.

Two hosts (namespaces on an underlay bridge of their own, podplumb.overlay.lab) with static peers
and a pod each; runs alternate between the two paths; figures are medians. Everything is removed
afterwards, whatever happened.

    python -m bench.vxlan_bench [--vxlan-seconds 4] [--vxlan-runs 3] [--quick]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

from podplumb import netns
from podplumb.install import install
from podplumb.overlay import lab
from podplumb.runtime import Network

VNI = 4242
PORT = 5299


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.vxlan_bench")
    parser.add_argument("--vxlan-seconds", type=float, default=4, help="length of one iperf3 run")
    parser.add_argument("--vxlan-runs", type=int, default=3, help="runs per path (median)")
    parser.add_argument("--quick", action="store_true", help="one short run per path")
    args, _ = parser.parse_known_args(argv)
    if args.quick:
        args.vxlan_seconds, args.vxlan_runs = 1, 1
    return args


def iperf3(client_ns: str, server_ns: str, server_ip: str, seconds: float) -> float:
    """Bits per second received in one single-stream TCP run."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            run = netns.sh("iperf3", "-c", server_ip, "-p", str(PORT), "-t", str(seconds), "-J", ns=client_ns,
                           check=False, timeout=seconds + 30)
            report = json.loads(run.stdout or '{"error": "no output"}')
            if "error" not in report:    # iperf3 3.12 -J may exit 0 on errors: read the report
                return report["end"]["sum_received"]["bits_per_second"]
            if "refused" not in report["error"]:
                raise RuntimeError(f"iperf3 failed: {report['error']} {run.stderr}")
            time.sleep(0.1)    # the server is not listening yet
        raise RuntimeError("iperf3 server did not start")
    finally:
        server.kill()
        server.wait()


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="podplumb-vxlan-bench-") as work, \
            lab.data_centre(work, hosts=2, prefix="ppbvx") as dc:
        bin_dir = f"{work}/bin"
        install(bin_dir, daemon_socket=None)
        pods = []
        for i, host in enumerate(dc.hosts):
            net = Network({"cniVersion": "1.1.0", "name": "bench-overlay",
                           "plugins": [lab.static_plugin(host, dc.hosts, VNI)]}, bin_dir, host_ns=host.ns)
            pod = dc.add_pod()
            pods.append((pod, lab.pod_ip(net.add(f"bench{i}", netns.path(pod)))))
        (pod_a, _), (pod_b, ip_b) = pods
        host_a, host_b = dc.hosts
        overlay, underlay = [], []
        for _ in range(args.vxlan_runs):
            underlay.append(iperf3(host_a.ns, host_b.ns, host_b.underlay_ip, args.vxlan_seconds))
            overlay.append(iperf3(pod_a, pod_b, ip_b, args.vxlan_seconds))
    under, over = statistics.median(underlay), statistics.median(overlay)
    print(f"underlay host->host : {under / 1e9:7.2f} Gbit/s  (MTU 1500, {len(underlay)} x {args.vxlan_seconds:g}s)")
    print(f"overlay  pod->pod   : {over / 1e9:7.2f} Gbit/s  (MTU 1450, VXLAN VNI {VNI})")
    print(f"overlay / underlay  : {over / under:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
