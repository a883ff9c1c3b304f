"""portmap benchmark: one container's portmap ADD+DEL, podplumb (nftables, one transaction) against
the reference plugin (iptables), as the host fills up with other containers' mappings.

(bench/cni_bench.py times the whole bridge+host-local+portmap chain; this one isolates portmap and
shows how its cost grows with the number of mappings on the host.) Everything runs inside a
throwaway namespace playing the host; flavors alternate within every repetition; figures are medians.

    python -m bench.portmap_bench [--portmap-runs 15] [--portmap-background 200] [--quick]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from podplumb import netns
from podplumb.install import install
from podplumb.runtime import exec_plugin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_BIN = "/usr/lib/cni"
CNI_VERSION = "1.0.0"          # the newest the reference plugins of Debian 12 speak


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.portmap_bench")
    parser.add_argument("--portmap-runs", type=int, default=15, help="repetitions per figure (median)")
    parser.add_argument("--portmap-background", type=int, default=200,
                        help="other containers holding mappings in the loaded case")
    parser.add_argument("--quick", action="store_true", help="shrink everything (CI smoke run)")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.quick:
        args.portmap_runs, args.portmap_background = 3, 20
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.inside:
        return run_inside(args, args.inside)
    if not os.access(os.path.join(REFERENCE_BIN, "portmap"), os.X_OK):
        print(f"reference portmap missing in {REFERENCE_BIN}: nothing to compare")
        return 0
    host = f"ppbench-pm-{uuid.uuid4().hex[:8]}"
    pod = host + "-pod"
    with netns.namespaces(host, pod):
        inner = [sys.executable, "-m", "bench.portmap_bench", *argv, "--inside", netns.path(pod)]
        return subprocess.run(["ip", "netns", "exec", host, *inner], cwd=REPO).returncode


def _prev_result(index: int) -> dict:
    return {"cniVersion": CNI_VERSION,
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"address": f"10.{60 + index // 250}.{index % 250}.2/16", "interface": 0}]}


def _call(bin_dir: str, command: str, container: str, pod_ns: str, index: int, ports: range) -> float:
    config = {"cniVersion": CNI_VERSION, "name": "benchnet", "type": "portmap", "prevResult": _prev_result(index),
              "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}
                                                 for port in ports]}}
    started = time.perf_counter()
    run = exec_plugin(bin_dir, "portmap", command, config, container_id=container, netns=pod_ns, ifname="eth0")
    elapsed = time.perf_counter() - started
    if run.code != 0:
        raise RuntimeError(f"{bin_dir}/portmap {command} failed: {run.stdout!r} {run.stderr[-500:]!r}")
    return elapsed


def run_inside(args, pod_ns: str) -> int:
    ours = tempfile.mkdtemp(prefix="ppbench-pm-bin-")
    try:
        install(ours)
        return _measure(args, pod_ns, {"podplumb": ours, "reference": REFERENCE_BIN})
    finally:
        shutil.rmtree(ours, ignore_errors=True)


def _measure(args, pod_ns: str, flavors: dict) -> int:
    figures = {}
    background = 0
    for load in (0, args.portmap_background):
        for flavor, bin_dir in flavors.items():            # fill the host up to `load` containers each
            offset = 0 if flavor == "podplumb" else 5000
            for index in range(background, load):
                port = 20000 + offset + index
                _call(bin_dir, "ADD", f"bg-{flavor}-{index}", pod_ns, index + offset // 10, range(port, port + 1))
        background = load
        for mappings in (1, 20):
            samples = {flavor: [] for flavor in flavors}
            for run in range(args.portmap_runs):
                order = list(flavors) if run % 2 == 0 else list(reversed(flavors))
                for flavor in order:
                    index, first = (1000, 50000) if flavor == "podplumb" else (1100, 51000)
                    ports = range(first, first + mappings)
                    took = _call(flavors[flavor], "ADD", "timed", pod_ns, index, ports)
                    took += _call(flavors[flavor], "DEL", "timed", pod_ns, index, ports)
                    samples[flavor].append(took)
            figures[(load, mappings)] = {f: statistics.median(s) * 1000 for f, s in samples.items()}
    print(f"portmap ADD+DEL of one container, median of {args.portmap_runs} (ms); "
          "reference = containernetworking-plugins portmap (iptables)")
    print(f"{'containers already mapped':>26} {'mappings':>9} {'podplumb':>9} {'reference':>10} {'ratio':>6}")
    for (load, mappings), by in figures.items():
        print(f"{load:>26} {mappings:>9} {by['podplumb']:>9.1f} {by['reference']:>10.1f} "
              f"{by['podplumb'] / by['reference']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
