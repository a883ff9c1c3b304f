"""Drive CNI plugins the way a runtime (libcni) does: one executable per call, a conflist chained
with prevResult, runtimeConfig filtered by declared capabilities, cached results for CHECK and DEL.
Used by the demo, the tests and the benchmarks."""

import dataclasses
import json
import os
import subprocess
import sys
import time

from cni import tools
from podplumb import client


@dataclasses.dataclass
class Run:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def json(self):
        return json.loads(self.stdout) if self.stdout.strip() else None


class PluginFailed(Exception):
    def __init__(self, plugin: str, command: str, run: Run):
        self.run = run
        try:
            self.error = json.loads(run.stdout)
        except ValueError:
            self.error = None
        super().__init__(f"{plugin} {command} exited {run.code}: {run.stdout.decode(errors='replace')} "
                         f"stderr: {run.stderr.decode(errors='replace')[-1500:]}")


def exec_plugin(bin_dir, plugin_type, command, config, *, container_id="", netns="", ifname="",
                cni_args="", path=None, host_ns=None, env=None, timeout=60) -> Run:
    """Run one plugin executable with the CNI environment; `host_ns` runs it inside that netns."""
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    call_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command}
    if os.environ.get("PODPLUMB_STATE_DIR"):     # where attachment records go (cni.records): the tests' own
        call_env["PODPLUMB_STATE_DIR"] = os.environ["PODPLUMB_STATE_DIR"]
    for key, value in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname),
                       ("CNI_ARGS", cni_args)):
        if value:
            call_env[key] = value
    cni_path = ":".join(str(p) for p in (path if path is not None else [bin_dir]))
    if cni_path:   # path=[]: no CNI_PATH at all
        call_env["CNI_PATH"] = cni_path
    call_env.update(env or {})
    argv = [os.path.join(str(bin_dir), plugin_type)]
    if host_ns:   # `ip` is found on our own PATH: the plugin's environment may have none
        argv = [tools.find("ip") or "ip", "netns", "exec", host_ns] + argv
    proc = subprocess.run(argv, input=stdin, env=call_env, capture_output=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout, proc.stderr)


class Network:
    """A network config list as a runtime holds it."""

    def __init__(self, conflist: dict, bin_dir, *, host_ns=None, path=None, env=None):
        self.conflist = conflist
        self.bin_dir = str(bin_dir)
        self.host_ns = host_ns
        self.path = path
        self.env = env or {}
        self.cache = {}   # (container_id, ifname) -> last ADD result, as libcni caches it
        self.version = conflist.get("cniVersion") or max(conflist["cniVersions"],
                                                         key=lambda v: tuple(map(int, v.split("."))))

    def config(self, plugin: dict, capability_args: dict | None = None, prev_result=None) -> dict:
        """What `plugin` gets on stdin: its section of the list, runtimeConfig filtered by its capabilities."""
        config = dict(plugin, name=self.conflist["name"], cniVersion=self.version)
        capabilities = plugin.get("capabilities") or {}
        runtime_config = {k: v for k, v in (capability_args or {}).items() if capabilities.get(k)}
        if runtime_config:
            config["runtimeConfig"] = runtime_config
        if prev_result is not None:
            config["prevResult"] = prev_result
        return config

    def _call(self, plugin, command, config, **kw) -> Run:
        run = exec_plugin(self.bin_dir, plugin["type"], command, config, host_ns=self.host_ns,
                          path=self.path, env=self.env, **kw)
        if run.code != 0:
            raise PluginFailed(plugin["type"], command, run)
        return run

    def add(self, container_id, netns, ifname="eth0", capability_args=None, cni_args="") -> dict:
        prev = None
        for plugin in self.conflist["plugins"]:
            config = self.config(plugin, capability_args, prev)
            prev = self._call(plugin, "ADD", config, container_id=container_id, netns=netns,
                              ifname=ifname, cni_args=cni_args).json
        self.cache[(container_id, ifname)] = (prev, capability_args, cni_args)
        return prev

    def check(self, container_id, netns, ifname="eth0"):
        prev, capability_args, cni_args = self.cache[(container_id, ifname)]
        for plugin in self.conflist["plugins"]:
            self._call(plugin, "CHECK", self.config(plugin, capability_args, prev),
                       container_id=container_id, netns=netns, ifname=ifname, cni_args=cni_args)

    def delete(self, container_id, netns="", ifname="eth0", capability_args=None, use_cache=True):
        prev, cached_args, cni_args = self.cache.get((container_id, ifname), (None, None, ""))
        if not use_cache:
            prev = None
        for plugin in reversed(self.conflist["plugins"]):
            self._call(plugin, "DEL", self.config(plugin, capability_args or cached_args, prev),
                       container_id=container_id, netns=netns, ifname=ifname, cni_args=cni_args)
        self.cache.pop((container_id, ifname), None)

    def gc(self, valid_attachments):
        for plugin in self.conflist["plugins"]:
            config = self.config(plugin, None, None)
            config["cni.dev/valid-attachments"] = [{"containerID": c, "ifname": i} for c, i in valid_attachments]
            self._call(plugin, "GC", config)

    def status(self):
        for plugin in self.conflist["plugins"]:
            self._call(plugin, "STATUS", self.config(plugin, None, None))


class DaemonProcess:
    """`podplumb daemon` as a child process, inside the namespace `ns` when one is given (its calls work in
    their callers' namespaces wherever it is): started and polled until it answers on its socket,
    stopped with SIGTERM and, after a bound, SIGKILL."""

    START_TIMEOUT = 30
    STOP_TIMEOUT = 15
    DRAIN_TIMEOUT = 10      # below STOP_TIMEOUT: a stopping daemon exits by itself

    def __init__(self, ns: str | None, socket_path: str, log_path: str, env: dict | None = None, args=(), *,
                 wait_warm: bool = False):
        self.ns = ns
        self.socket = socket_path
        self.log_path = log_path
        self.env = env
        self.args = list(args)
        self.wait_warm = wait_warm      # start() also waits until the daemon has imported every plugin
        self.proc = None

    def start(self) -> "DaemonProcess":
        podplumb = os.path.join(os.path.dirname(sys.executable), "podplumb")
        argv = [podplumb, "daemon", "--socket", self.socket, "--drain-timeout", str(self.DRAIN_TIMEOUT), *self.args]
        if self.ns:     # `ip netns exec` execs the command: self.proc.pid is the daemon's pid
            argv = [tools.find("ip") or "ip", "netns", "exec", self.ns] + argv
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node daemon exited {self.proc.returncode}: {self.log()}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"node daemon did not answer on {self.socket} within {self.START_TIMEOUT}s: {self.log()}")

    def _ready(self) -> bool:
        if not os.path.exists(self.socket) or client.forward(
                self.socket, "plugins.bridge.plugin:PLUGIN", {"CNI_COMMAND": "VERSION"}, b"") is None:
            return False
        return not self.wait_warm or "warm in" in self.log(tail=None)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a bound; the exit code (negative: killed by that signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self, tail: int | None = 3000) -> str:
        with open(self.log_path, errors="replace") as f:
            text = f.read()
        return text[-tail:] if tail else text
