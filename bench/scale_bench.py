"""Scale benchmark: does one pod's cycle cost grow with the node?

`python -m bench --only scale --pods N`: the time of one pod's ADD+DEL (bridge with ipMasq, then
portmap with one host port), first on an empty node, then with N other pods attached, each with its
masquerade rule and a host port. Ours (standalone, and through `podplumb daemon`) and the reference
Go plugins are alternated within every repetition; figures are medians. Ours and the reference each
get their own N pods, each on a node of its own (a namespace playing the host), as a node runs one
set of plugins: ours would otherwise walk the reference's per-pod state in the kernel (its host-side
veths' IPv6 routes, its iptables-nft chains), and the reference ours. The other pods' interfaces
live in a few shared namespaces (up to 100 interfaces each: `CNI_IFNAME` eth0..eth99): what a node
holds for them (veths on the bridge, rules, leases) is what a pod each would make, for far fewer
namespaces. Everything happens in throwaway namespaces, as in the cni bench.

Two waits keep one cycle from paying for work that is not its own. The second figure is taken
`--settle` seconds (15) after the last other pod was attached: for a few seconds after a link comes
up, the kernel's own work on it (IPv6 DAD, router solicitations, link watch) holds the RTNL lock that
every netlink request takes (right after 300 attachments a link request took three times as long as
15 s later). And each cycle starts `--gap` seconds (0.1) after the previous one, whose veth the
kernel may still be tearing down (RCU waits under the RTNL lock, longer on a bigger node): without
the gap, a flavor's cycle pays for the teardown of the flavor before it.
"""

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import time
import uuid

from bench.cni_bench import CNI_VERSION, PREFIX, REFERENCE_BIN, Flavor, PluginFailed, run_in_fake_host
from cni.netlink import enter
from podplumb import netns, runtime
from podplumb.install import install

PER_CROWD = 100           # interfaces per namespace of the other pods
# The daemon's log line for each call (podplumb/worker.py), for the measured pods' containers (s<hex>).
_CALL_LOG = re.compile(r"call \d+: (\S+) (\S+) container=s[0-9a-f]+ ifname=\S+ -> exit 0 in ([0-9.]+)s")
SCALE_TARGET = 1.1        # N pods / no pod, for our flavors


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench --only scale",
                                     description="one pod's cycle with N other pods on the node")
    parser.add_argument("--runs", type=int, default=20, help="cycles per flavor and node size (median)")
    parser.add_argument("--pods", type=int, default=300, help="other pods attached for the second figure")
    parser.add_argument("--parallel", type=int, default=8, help="other pods attached/detached at a time")
    parser.add_argument("--settle", type=float, default=15, help="seconds between the last pod attached and "
                        "the measure (the kernel's start-up work on new links: IPv6 DAD, router solicitations)")
    parser.add_argument("--gap", type=float, default=0.1,
                        help="seconds of quiet before each cycle: the kernel's teardown of the previous "
                        "cycle's veth (RCU waits under the RTNL lock) is not charged to the next flavor")
    parser.add_argument("--flavors", default="standalone,daemon,reference",
                        help="the flavors whose cycle is measured (both crowds are attached anyway)")
    parser.add_argument("--quick", action="store_true", help="shrink everything (CI smoke run)")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.quick:
        args.runs, args.pods, args.settle = min(args.runs, 3), min(args.pods, 20), 0
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.inside:
        return Inside(json.loads(args.inside), args).run()
    if not os.access(os.path.join(REFERENCE_BIN, "portmap"), os.X_OK):
        print(f"scale bench: reference plugins missing in {REFERENCE_BIN}", file=sys.stderr)
        return 1
    return run_outside(args, argv if argv is not None else sys.argv[1:])


def run_outside(args, argv) -> int:
    run_id = uuid.uuid4().hex[:6]
    crowds = [f"{PREFIX}-{run_id}-c{i}" for i in range(2 * -(-args.pods // PER_CROWD))]
    pods = [f"{PREFIX}-{run_id}-p{i}" for i in range(3)]
    reference_node = [f"{PREFIX}-{run_id}-refhost"]
    return run_in_fake_host("bench.scale_bench", argv, run_id,
                            {"pods": pods, "crowds": crowds, "reference_node": reference_node})


class Network(runtime.Network):
    """bridge (ipMasq) + portmap, its calls spawned by `flavor`; `index` picks bridge, subnet and ports."""

    def __init__(self, flavor: Flavor, workdir: str, name: str, index: int, host_fd: int | None = None):
        bridge = {"type": "bridge", "bridge": f"ppsc{index}", "isGateway": True, "ipMasq": True,
                  "ipam": {"type": "host-local", "dataDir": os.path.join(workdir, "ipam"),
                           "ranges": [[{"subnet": f"10.{120 + index}.0.0/16"}]]}}
        super().__init__({"cniVersion": CNI_VERSION, "name": name,
                          "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": True}}]},
                         flavor.bin_dir)
        self.flavor = flavor
        self.port_base = 20000 + 5000 * index
        self.host_fd = host_fd          # the node its calls run on, when not the bench's own

    def _call(self, plugin, command, config, container_id="", netns="", ifname="", cni_args=""):
        with _on_node(self.host_fd):
            return self.flavor.call(plugin["type"], command, config, containerid=container_id, netns=netns,
                                    ifname=ifname, args=cni_args)

    def mapping(self, port: int) -> dict:
        return {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]}

    def cycle(self, pod: str) -> float:
        container = f"s{uuid.uuid4().hex[:10]}"
        started = time.perf_counter()
        self.add(container, pod, capability_args=self.mapping(self.port_base - 1))
        self.delete(container, pod)
        return time.perf_counter() - started


@contextlib.contextmanager
def _on_node(host_fd: int | None):
    """This thread (only it: what it spawns runs there) in the network namespace open at `host_fd`,
    when one is given."""
    if host_fd is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter(host_fd, "the reference's node")
        try:
            yield
        finally:
            enter(own, "the bench's node")
    finally:
        os.close(own)


class Inside:
    def __init__(self, spec: dict, args):
        self.args = args
        self.pods = [netns.path(p) for p in spec["pods"]]
        self.crowds = [netns.path(c) for c in spec["crowds"]]
        self.reference_node = spec["reference_node"][0]
        self.workdir = spec["workdir"]
        self.samples = {}           # (flavor, phase) -> cycle times, seconds
        self.calls = {}             # phase -> [(plugin, command, seconds in the daemon)]
        self.daemon_log = os.path.join(self.workdir, "daemon.log")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        standalone, daemon_bin = (os.path.join(self.workdir, d) for d in ("bin-standalone", "bin-daemon"))
        install(standalone, daemon_socket=None)
        install(daemon_bin, daemon_socket=os.path.join(self.workdir, "cni.sock"))
        flavors = [Flavor("standalone", standalone, 0), Flavor("daemon", daemon_bin, 1),
                   Flavor("reference", REFERENCE_BIN, 2)]
        ours = Network(flavors[1], self.workdir, "scale-ours", 0)       # the daemon attaches the crowd
        netns.sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.reference_node)
        reference = Network(flavors[2], self.workdir, "scale-ref", 1,
                            os.open(netns.path(self.reference_node), os.O_RDONLY | os.O_CLOEXEC))
        every = {"standalone": Network(flavors[0], self.workdir, "scale-ours", 0), "daemon": ours,
                 "reference": reference}
        nets = {name: net for name, net in every.items() if name in self.args.flavors.split(",")}
        crowd = (ours, reference)
        attached = False
        try:
            for name, net in every.items():                   # warm up; the first call makes the bridge
                net.cycle(self.pods[0])
            self._measure(nets, 0, "before")
            log(f"attaching {self.args.pods} pods for ours and for the reference")
            started = time.perf_counter()
            attached = True
            for i, net in enumerate(crowd):
                self._crowd(net, self.crowds[i::2], "ADD")
            log(f"attached in {time.perf_counter() - started:.0f} s; measuring {self.args.settle:.0f} s later")
            time.sleep(self.args.settle)
            self._measure(nets, self.args.pods, "crowd")
            self._detach(crowd)
            attached = False
            time.sleep(self.args.settle)
            self._measure(nets, 0, "after")     # again, so that a drift of the machine shows
            self._report(nets)
        except PluginFailed as e:
            print(f"scale bench: a plugin call failed: {e}", file=sys.stderr)
            return 1
        finally:
            if attached:
                self._detach(crowd)
        return 0

    def _detach(self, crowd):
        log("detaching the other pods")
        for i, net in enumerate(crowd):
            self._crowd(net, self.crowds[i::2], "DEL")

    def _measure(self, nets: dict, pods: int, phase: str):
        log(f"cycles with {pods} other pods ({self.args.runs} runs)")
        log_start = os.path.getsize(self.daemon_log)
        for _ in range(self.args.runs):
            for i, (name, net) in enumerate(nets.items()):     # flavors alternate
                time.sleep(self.args.gap)
                self.samples.setdefault((name, phase), []).append(net.cycle(self.pods[i]))
        with open(self.daemon_log, errors="replace") as f:
            f.seek(log_start)
            self.calls[phase] = _CALL_LOG.findall(f.read())

    def _median(self, flavor: str, *phases: str) -> float:
        return statistics.median(t for phase in phases for t in self.samples[(flavor, phase)])

    def _call_medians(self, *phases: str) -> dict:
        """{"plugin COMMAND": median seconds inside the daemon} of the cycles measured in `phases`."""
        times = {}
        for plugin, command, seconds in (call for phase in phases for call in self.calls[phase]):
            times.setdefault(f"{plugin} {command}", []).append(float(seconds))
        return {call: statistics.median(values) for call, values in times.items()}

    def _crowd(self, net: Network, namespaces: list, command: str):
        """Attach (ADD) or detach (DEL) the other pods, `parallel` at a time; DEL is best effort."""
        slots = [(namespaces[i // PER_CROWD], f"eth{i % PER_CROWD}", i) for i in range(self.args.pods)]

        def one(slot):
            ns, ifname, i = slot
            container = f"crowd{i}"
            if command == "ADD":
                net.add(container, ns, ifname, capability_args=net.mapping(net.port_base + i))
            else:
                try:
                    net.delete(container, ns, ifname)
                except PluginFailed as e:
                    log(f"DEL of {container} failed: {e}")

        with concurrent.futures.ThreadPoolExecutor(self.args.parallel) as pool:
            list(pool.map(one, slots))

    def _report(self, nets: dict):
        n = self.args.pods
        print(f"\nScale: one pod's bridge(ipMasq)+portmap ADD+DEL, cniVersion {CNI_VERSION}, ms, medians of "
              f"{self.args.runs} runs: with no other pod before the {n} were attached and after they left "
              "(growth: against the median of both)")
        header = (f"{'flavor':<12}{'none before':>12}{f'{n} other pods':>16}{'none after':>12}{'growth':>9}"
                  f"{'vs reference':>14}")
        print(header)
        print("-" * len(header))
        for flavor in nets:
            before, full, after = (self._median(flavor, phase) for phase in ("before", "crowd", "after"))
            growth = full / self._median(flavor, "before", "after")
            versus = f"{full / self._median('reference', 'crowd'):>14.2f}" if "reference" in nets else ""
            print(f"{flavor:<12}{before * 1000:>12.1f}{full * 1000:>16.1f}{after * 1000:>12.1f}{growth:>9.2f}{versus}")
        if "daemon" in nets:
            print(f"\nthe daemon's time in each call (its log), median ms: no other pod -> {n} other pods")
            empty, full = self._call_medians("before", "after"), self._call_medians("crowd")
            for call in sorted(full):
                print(f"  {call:<22}{empty.get(call, 0) * 1000:>7.1f} ->{full[call] * 1000:>7.1f}")
        print(f"\ntarget: ours with {n} pods <= {SCALE_TARGET}x ours with none:")
        for flavor in (f for f in nets if f != "reference"):
            growth = self._median(flavor, "crowd") / self._median(flavor, "before", "after")
            print(f"  {flavor}: {growth:.2f}x {'met' if growth <= SCALE_TARGET else 'MISSED'}")
        sys.stdout.flush()


def log(what: str):
    print(f"scale bench: {what}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
