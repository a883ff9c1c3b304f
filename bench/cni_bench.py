"""CNI benchmark: podplumb (standalone and through the node daemon) against the reference Go plugins.

Everything runs in a throwaway namespace playing the host, never on the real host. The outer process
makes that namespace and the pod namespaces, then runs itself inside it (`ip netns exec`, so /sys and
/proc/sys are the namespace's, as for a runtime on that host) and deletes everything afterwards,
whatever happened. Plugins are spawned like a runtime spawns them (posix_spawn + wait4: wall time
and peak RSS of each call). Flavors alternate within every repetition; figures are medians.
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from podplumb import client, netns, runtime
from podplumb.install import install

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_BIN = "/usr/lib/cni"
CNI_VERSION = "1.0.0"          # the newest the reference plugins (containernetworking-plugins 1.1.1) speak
PORTMAP_MODULE = os.path.join(REPO, "plugins", "portmap", "plugin.py")
PREFIX = "ppbench"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MIB = 1024
STARTUP = "python -I -S -c pass"     # the interpreter start-up figure: the flags of the launcher's shebang


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description="CNI plugins: podplumb vs reference")
    parser.add_argument("--runs", type=int, default=20, help="repetitions per timed figure (median)")
    parser.add_argument("--pods", type=int, default=100, help="pods in the churn test")
    parser.add_argument("--parallel", type=int, default=8, help="pods added/deleted at a time in the churn")
    parser.add_argument("--growth-cycles", type=int, default=1000,
                        help="ADD+DEL cycles through the daemon for its memory growth")
    parser.add_argument("--quick", action="store_true", help="shrink everything (CI smoke run)")
    parser.add_argument("--profile", action="store_true",
                        help="also run one standalone ADD under cProfile and -X importtime")
    parser.add_argument("--inside", help=argparse.SUPPRESS)   # the run inside the fake host (internal)
    args, _ = parser.parse_known_args(argv)    # other benches' flags pass through `python -m bench`
    if args.quick:
        args.runs, args.pods, args.growth_cycles = min(args.runs, 3), min(args.pods, 16), min(args.growth_cycles, 30)
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.inside:
        return Inside(json.loads(args.inside), args).run()
    if not os.access(os.path.join(REFERENCE_BIN, "bridge"), os.X_OK):
        print(f"cni bench: reference plugins missing in {REFERENCE_BIN} "
              "(Debian package containernetworking-plugins)", file=sys.stderr)
        return 1
    return run_outside(args, argv if argv is not None else sys.argv[1:])


# ---------------------------------------------------------------- outside: namespaces and cleanup

def run_outside(args, argv) -> int:
    run_id = uuid.uuid4().hex[:6]
    return run_in_fake_host("bench.cni_bench", argv, run_id,
                            {"pods": [f"{PREFIX}-{run_id}-p{i}" for i in range(args.pods + 4)]})


def run_in_fake_host(module: str, argv, run_id: str, namespaces: dict[str, list[str]]) -> int:
    """Run `module --inside SPEC` in a throwaway namespace playing the host, beside the named namespaces
    (SPEC carries them under their keys, the host, a work dir and the daemon's pid); remove it all after."""
    host = f"{PREFIX}-{run_id}-host"
    workdir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ["PODPLUMB_STATE_DIR"] = os.path.join(workdir, "records")     # never the machine's records
    # The daemon runs in this (the machine's) network and mount namespace, the plugins are called from
    # the fake host: the daemon must do its work where its caller is.
    daemon = runtime.DaemonProcess(None, os.path.join(workdir, "cni.sock"), os.path.join(workdir, "daemon.log"),
                                   wait_warm=True)
    try:
        with netns.namespaces(host, *(name for names in namespaces.values() for name in names)):
            try:
                netns.sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=host)
                daemon.start()
                spec = {"host": host, "workdir": workdir, "daemon_pid": daemon.proc.pid, **namespaces}
                inner = [sys.executable, "-m", module, *argv, "--inside", json.dumps(spec)]
                return subprocess.run(["ip", "netns", "exec", host, *inner], cwd=REPO).returncode
            finally:
                daemon.stop()
                _kill_namespace_processes(host)
    except RuntimeError as e:
        print(f"{module}: the daemon did not start: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def _base_env() -> dict:
    """What a runtime would pass besides the CNI variables, and where our attachment records go."""
    return {"PATH": PATH, "PODPLUMB_STATE_DIR": os.environ["PODPLUMB_STATE_DIR"]}


def _kill_namespace_processes(ns: str):
    """Whatever still runs in our throwaway host namespace was started by this bench."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


# ---------------------------------------------------------------- spawning a plugin like a runtime

@dataclasses.dataclass
class Call(runtime.Run):
    seconds: float
    max_rss_kib: int
    cpu_seconds: float = 0.0


def spawn(argv: list, env: dict, stdin: bytes = b"") -> Call:
    """fork+exec as a runtime does; stdio through memory files (no pipes to pump)."""
    files = [os.fdopen(os.memfd_create(name), "w+b") for name in ("stdin", "stdout", "stderr")]
    with files[0], files[1], files[2]:
        files[0].write(stdin)
        files[0].flush()
        files[0].seek(0)
        actions = [(os.POSIX_SPAWN_DUP2, f.fileno(), fd) for fd, f in enumerate(files)]
        started = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - started
        files[1].seek(0)
        files[2].seek(0)
        return Call(os.waitstatus_to_exitcode(status), files[1].read(), files[2].read(), seconds, usage.ru_maxrss,
                    usage.ru_utime + usage.ru_stime)


class PluginFailed(Exception):
    pass


@dataclasses.dataclass
class Flavor:
    """One way of running the plugins: where the executables are and what CNI_PATH is."""
    name: str
    bin_dir: str
    index: int
    peak_rss_kib: int = 0
    cpu_seconds: float = 0.0          # of every process it spawned

    def call(self, plugin: str, command: str, config: dict | None, **cni) -> Call:
        env = {**_base_env(), "CNI_COMMAND": command, "CNI_PATH": self.bin_dir}
        env.update({f"CNI_{k.upper()}": v for k, v in cni.items() if v})
        call = spawn([os.path.join(self.bin_dir, plugin)], env, json.dumps(config).encode() if config else b"")
        self.peak_rss_kib = max(self.peak_rss_kib, call.max_rss_kib)
        self.cpu_seconds += call.cpu_seconds
        if call.code != 0:
            raise PluginFailed(f"{self.name}: {plugin} {command} exited {call.code}: "
                               f"{call.stdout.decode(errors='replace')} {call.stderr.decode(errors='replace')[-800:]}")
        return call


class Network(runtime.Network):
    """A conflist of one flavor, chained as libcni chains it (podplumb.runtime.Network: prevResult,
    capabilities, the ADD result cached for DEL); each plugin spawned by its flavor."""

    def __init__(self, flavor: Flavor, workdir: str, portmap: bool):
        main_plugin = {"type": "bridge", "bridge": f"ppb{flavor.index}{'p' if portmap else ''}", "isGateway": True,
                       "ipam": {"type": "host-local", "dataDir": os.path.join(workdir, "ipam", flavor.name),
                                "ranges": [[{"subnet": f"10.{100 + 2 * flavor.index + portmap}.0.0/16"}]]}}
        plugins = [main_plugin]
        if portmap:
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
        super().__init__({"cniVersion": CNI_VERSION, "name": f"bench-{flavor.name}{'-pm' if portmap else ''}",
                          "plugins": plugins}, flavor.bin_dir)
        self.flavor = flavor
        self.runtime_config = {"portMappings": [{"hostPort": 18080 + flavor.index, "containerPort": 80,
                                                 "protocol": "tcp"}]}

    def _call(self, plugin, command, config, container_id="", netns="", ifname="", cni_args="") -> Call:
        return self.flavor.call(plugin["type"], command, config, containerid=container_id, netns=netns,
                                ifname=ifname, args=cni_args)

    def cycle(self, container_id: str, netns: str) -> float:
        started = time.perf_counter()
        self.add(container_id, netns, capability_args=self.runtime_config)
        self.delete(container_id, netns)
        return time.perf_counter() - started


# ---------------------------------------------------------------- inside the fake host

class Inside:
    def __init__(self, spec: dict, args):
        self.args = args
        self.host = spec["host"]
        self.pods = [netns.path(p) for p in spec["pods"]]
        self.workdir = spec["workdir"]
        self.socket = os.path.join(self.workdir, "cni.sock")
        self.daemon_pid = spec["daemon_pid"]
        self.figures = {}      # metric -> {flavor name: value}
        self.notes = []

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            self.flavors = self._prepare()
            self._measure()
        except PluginFailed as e:
            print(f"cni bench: a plugin call failed: {e}", file=sys.stderr)
            return 1
        finally:
            self._check_daemon_namespace()
        print_report(self.figures, self.notes, self.args)
        return 0

    def _prepare(self) -> list:
        standalone, daemon_bin = (os.path.join(self.workdir, d) for d in ("bin-standalone", "bin-daemon"))
        install(standalone, daemon_socket=None)
        install(daemon_bin, daemon_socket=self.socket)
        return [Flavor("standalone", standalone, 0), Flavor("daemon", daemon_bin, 1),
                Flavor("reference", REFERENCE_BIN, 2)]

    def _daemon_memory_mib(self) -> float:
        """Proportional set size (shared pages split among their sharers) of the daemon, its worker
        host and the call processes waiting or serving: the memory the daemon costs the node."""
        pids, pending = [], [self.daemon_pid]
        while pending:
            pid = pending.pop()
            pids.append(pid)
            pending += _children(pid)
        return sum(_pss_kib(p) for p in pids) / MIB

    def _check_daemon_namespace(self):
        """The daemon lives in the machine's namespace: none of the bench's bridges may appear there."""
        if os.readlink(f"/proc/{self.daemon_pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            self.notes.append("the daemon runs in the bench's own network namespace")
            return
        with open(f"/proc/{self.daemon_pid}/net/dev") as f:
            leaked = [line.split(":")[0].strip() for line in f if line.strip().startswith("ppb")]
        self.notes.append(f"daemon in another network namespace; bench bridges there: {leaked or 'none'}")

    def _measure(self):
        runs = self.args.runs
        log = lambda what: print(f"cni bench: {what}", file=sys.stderr, flush=True)  # noqa: E731

        log(f"interpreter start-up, VERSION ({runs} runs each)")
        python = sys.executable
        self._timed(STARTUP, {"standalone": lambda: spawn([python, "-I", "-S", "-c", "pass"], {}).seconds})
        self._timed("VERSION", {f.name: (lambda f=f: f.call("bridge", "VERSION", None).seconds) for f in self.flavors})

        for portmap in (False, True):
            label = "bridge+host-local" + ("+portmap" if portmap else "")
            if portmap and not os.path.exists(PORTMAP_MODULE):
                self.notes.append("plugins/portmap/plugin.py is missing: no portmap cycles")
                continue
            nets = {f.name: Network(f, self.workdir, portmap) for f in self.flavors}
            pod = {f.name: self.pods[-1 - f.index] for f in self.flavors}
            for f in self.flavors:          # warm caches; the first call also creates the bridge
                nets[f.name].cycle("warm", pod[f.name])
            log(f"{label} ADD+DEL cycles ({runs} runs)")
            cpu_before = self._cpu_seconds()
            self._timed(f"{label} ADD+DEL", {name: (lambda n=net, p=pod[name]: n.cycle(f"c{uuid.uuid4().hex[:8]}", p))
                                            for name, net in nets.items()})
            self.figures[f"CPU time of one {label} ADD+DEL"] = {
                name: (after - cpu_before[name]) / runs for name, after in self._cpu_seconds().items()}

        log(f"{self.args.pods} pods, {self.args.parallel} at a time")
        for f in self.flavors:
            self.figures.setdefault(f"{self.args.pods} pods ADD then DEL, {self.args.parallel} at a time", {})[
                f.name] = self._churn(Network(f, self.workdir, False))

        self.figures["peak RSS of one plugin process (MiB)"] = {f.name: f.peak_rss_kib / MIB for f in self.flavors}
        log(f"daemon memory over {self.args.growth_cycles} ADD+DEL cycles")
        self.figures[f"daemon memory growth over {self.args.growth_cycles} cycles (MiB)"] = {"daemon": self._growth()}
        self.figures["daemon memory, PSS of all its processes (MiB)"] = {"daemon": self._daemon_memory_mib()}
        if self.args.profile:
            self._profile()

    def _cpu_seconds(self) -> dict:
        """CPU time used so far, per flavor: its spawned processes, and for the daemon flavor the
        daemon's processes too (its main process, the worker host, its call processes: those alive,
        and those it reaped). Independent of how loaded the machine is, unlike wall time."""
        time.sleep(0.2)          # let the last call end
        used = {f.name: f.cpu_seconds for f in self.flavors}
        pid = self.daemon_pid
        host = _children(pid)[0]
        calls = _children(host)
        ticks = _cpu_ticks(pid, reaped=False) + _cpu_ticks(host, reaped=True) + sum(_cpu_ticks(p, False) for p in calls)
        used["daemon"] += ticks / os.sysconf("SC_CLK_TCK")
        return used

    def _timed(self, metric: str, runners: dict):
        samples = {name: [] for name in runners}
        for _ in range(self.args.runs):
            for name, run in runners.items():       # flavors alternate within each repetition
                samples[name].append(run())
        self.figures[metric] = {name: statistics.median(values) for name, values in samples.items()}

    def _churn(self, net: Network) -> float:
        pods = self.pods[:self.args.pods]
        ids = [f"churn{i}-{uuid.uuid4().hex[:6]}" for i in range(len(pods))]
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(self.args.parallel) as pool:
            list(pool.map(net.add, ids, pods))
            list(pool.map(net.delete, ids, pods))        # each with its cached ADD result, as libcni
        return time.perf_counter() - started

    def _growth(self) -> float:
        """ADD+DEL straight to the daemon's socket (no launcher spawn): only the daemon's memory matters."""
        net = Network(self.flavors[1], self.workdir, False)
        pod = self.pods[-2]
        plugin = net.conflist["plugins"][0]
        env = {**_base_env(), "CNI_PATH": self.flavors[1].bin_dir, "CNI_NETNS": pod, "CNI_IFNAME": "eth0"}

        def cycle(i):
            container = dict(env, CNI_CONTAINERID=f"g{i}")
            out, code = client.forward(self.socket, "plugins.bridge.plugin:PLUGIN", dict(container, CNI_COMMAND="ADD"),
                                       json.dumps(net.config(plugin)).encode())
            if code:
                raise PluginFailed(f"daemon ADD: {out.decode(errors='replace')}")
            out, code = client.forward(self.socket, "plugins.bridge.plugin:PLUGIN", dict(container, CNI_COMMAND="DEL"),
                                       json.dumps(net.config(plugin, prev_result=json.loads(out))).encode())
            if code:
                raise PluginFailed(f"daemon DEL: {out.decode(errors='replace')}")

        for i in range(100):     # settle allocator caches and the pool of call processes first
            cycle(f"w{i}")
        before = self._daemon_memory_mib()
        for i in range(self.args.growth_cycles):
            cycle(i)
        return self._daemon_memory_mib() - before

    def _profile(self):
        """One standalone ADD: where its time goes (interpreter start, imports, netlink, IPAM)."""
        flavor = self.flavors[0]
        net = Network(flavor, self.workdir, False)
        plugin = net.conflist["plugins"][0]
        config = json.dumps(net.config(plugin)).encode()
        pod = self.pods[-1]
        env = {**_base_env(), "CNI_COMMAND": "ADD", "CNI_PATH": flavor.bin_dir, "CNI_NETNS": pod,
               "CNI_IFNAME": "eth0", "CNI_CONTAINERID": "profiled"}
        launcher = os.path.join(flavor.bin_dir, "bridge")
        stats_file = os.path.join(self.workdir, "add.prof")

        def add_then_del(argv):
            call = spawn(argv, env, config)
            if call.code:
                raise PluginFailed(f"profiled ADD: {call.stdout.decode(errors='replace')}")
            flavor.call("bridge", "DEL", net.config(plugin), containerid="profiled", netns=pod, ifname="eth0")
            return call

        wall = add_then_del([launcher]).seconds
        imports = add_then_del([sys.executable, "-I", "-S", "-X", "importtime", launcher]).stderr.decode()
        add_then_del([sys.executable, "-I", "-S", "-m", "cProfile", "-o", stats_file, launcher])
        print(f"\n== profile: one standalone bridge+host-local ADD, {wall * 1000:.1f} ms wall ==")
        start = self.figures[STARTUP]["standalone"]
        print(f"interpreter start-up ({STARTUP}, median): {start * 1000:.1f} ms")
        print("imports by top-level package (-X importtime, cumulative):")
        for name, micros in top_level_imports(imports)[:12]:
            print(f"  {micros / 1000:8.1f} ms  {name}")
        print("cProfile, top 25 by cumulative time (imports included):")
        stats = pstats.Stats(stats_file)
        stats.sort_stats("cumulative").print_stats(25)


def _children(pid: int) -> list[int]:
    """The process's children; none once it has ended."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _cpu_ticks(pid: int, reaped: bool) -> int:
    """utime + stime of the process (and with `reaped`, of its children it waited for); 0 once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return sum(int(v) for v in fields[11:15 if reaped else 13])


def _pss_kib(pid: int) -> int:
    """0 for a process that has ended meanwhile."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except (FileNotFoundError, ProcessLookupError):
        return 0


def top_level_imports(importtime: str) -> list:
    """[(package, cumulative µs)] from `-X importtime` lines for packages imported at top level."""
    totals = {}
    for line in importtime.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(3)) == 1:          # top-level import
            name = match.group(4).split(".")[0]
            totals[name] = totals.get(name, 0) + int(match.group(2))
    return sorted(totals.items(), key=lambda kv: -kv[1])


# ---------------------------------------------------------------- report

# (metric prefix, flavor, (kind, bound)): kind "ratio" bounds flavor/reference, "below" the value itself
TARGETS = [
    ("bridge+host-local ADD+DEL", "daemon", ("ratio", 0.7)),
    ("bridge+host-local ADD+DEL", "standalone", ("ratio", 5.0)),
    ("bridge+host-local+portmap ADD+DEL", "daemon", ("ratio", 0.5)),
    ("pods ADD then DEL", "daemon", ("ratio", 1.0)),
    ("VERSION", "daemon", ("below", 0.025)),
    ("daemon memory, PSS", "daemon", ("below", 80)),
    ("daemon memory growth", "daemon", ("below", 5)),
]


def print_report(figures: dict, notes: list, args):
    print(f"\nCNI: podplumb vs reference Go plugins ({REFERENCE_BIN}), cniVersion {CNI_VERSION}, "
          f"median of {args.runs} runs; times in ms unless stated")
    header = f"{'metric':<46}{'standalone':>12}{'daemon':>10}{'reference':>11}{'sa/ref':>8}{'dmn/ref':>9}"
    print(header)
    print("-" * len(header))
    for metric, values in figures.items():
        in_ms = "MiB" not in metric
        cells = []
        for flavor in ("standalone", "daemon", "reference"):
            value = values.get(flavor)
            cells.append("-" if value is None else f"{value * 1000:.1f}" if in_ms else f"{value:.1f}")
        ref = values.get("reference")
        ratios = [f"{values[f] / ref:.2f}" if ref and values.get(f) is not None else "-"
                  for f in ("standalone", "daemon")]
        label = metric + (" (s)" if "pods" in metric else "")
        if "pods" in metric:
            cells = ["-" if values.get(f) is None else f"{values[f]:.2f}" for f in ("standalone", "daemon", "reference")]
        print(f"{label:<46}{cells[0]:>12}{cells[1]:>10}{cells[2]:>11}{ratios[0]:>8}{ratios[1]:>9}")
    print("\ntargets:")
    for prefix, flavor, (kind, bound) in TARGETS:
        metric = next((m for m in figures if prefix in m), None)
        if metric is None:
            print(f"  {prefix} ({flavor}): not measured")
            continue
        value, ref = figures[metric].get(flavor), figures[metric].get("reference")
        got = value / ref if kind == "ratio" else value
        shown = f"{got:.2f}x reference" if kind == "ratio" else (f"{got * 1000:.1f} ms" if "MiB" not in metric
                                                                  else f"{got:.1f} MiB")
        limit = f"<= {bound}x" if kind == "ratio" else (f"< {bound * 1000:g} ms" if "MiB" not in metric
                                                        else f"< {bound:g} MiB")
        verdict = "met" if got <= bound else "MISSED"
        print(f"  {metric} ({flavor}): {shown}, target {limit}: {verdict}")
    for note in notes:
        print(f"  note: {note}")


if __name__ == "__main__":
    sys.exit(main())
