"""A private glusterd for tests: never the machine's own service.

glusterd runs in the foreground with a volfile of ours: its working directory
and management socket are in a temp dir and it listens on a random loopback
address (glusterd refuses 127.0.0.1 as a brick host, not 127.x.y.z). Every
process it spawns (brick glusterfsd, quotad) and every FUSE client of it names
that address on its command line, which is how teardown finds them all to stop
them by PID. What they leave in /var/run/gluster, /var/log/glusterfs and
/var/lib/glusterd (glusterd makes ss_brick and geo-replication there whatever
its working directory) is removed afterwards: only entries that were not there
before.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PORT = 24007
SHARED_DIRS = ("/var/run/gluster", "/var/log/glusterfs", "/var/lib/glusterd")
VOLFILE = """volume management
    type mgmt/glusterd
    option working-directory {root}/wd
    option glusterd-sockfile {root}/glusterd.socket
    option transport-type socket
    option transport.socket.bind-address {address}
    option transport.socket.listen-port {port}
    option ping-timeout 0
    option event-threads 1
end-volume
"""


class PortTaken(Exception):
    pass


def free_address():
    """A random 127.x.y.z where glusterd's port is free. Only the default port
    works: glusterd starts its bricks with `-s ADDRESS` and no port, so they
    ask port 24007 for their volume file whatever glusterd listens on."""
    for _ in range(20):
        address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        with socket.socket() as s:
            try:
                s.bind((address, PORT))
                return address
            except OSError:
                continue
    raise PortTaken(f"port {PORT} is taken on loopback addresses (a glusterd of the machine "
                    "listening on *:24007?): a second glusterd cannot run")


def _listing(directory):
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


class Glusterd:
    def __init__(self):
        self.address = free_address()
        self.root = Path(tempfile.mkdtemp(prefix="ppgl-", dir="/tmp"))
        self.volume = "pp" + uuid.uuid4().hex[:10]
        self.brick = self.root / "brick"
        self.socket = self.root / "glusterd.socket"
        self.proc = None
        self._before = {d: _listing(d) for d in SHARED_DIRS}

    def cli(self, *args, check=True):
        proc = subprocess.run(["gluster", "--mode=script", f"--glusterd-sock={self.socket}",
                               *args], capture_output=True, text=True, timeout=60)
        if check and proc.returncode:
            raise RuntimeError(f"gluster {' '.join(args)}: {proc.stdout}{proc.stderr}")
        return proc

    def start(self):
        (self.root / "wd").mkdir()
        self.brick.mkdir()
        volfile = self.root / "glusterd.vol"
        volfile.write_text(VOLFILE.format(root=self.root, address=self.address, port=PORT))
        self.proc = subprocess.Popen(
            ["glusterd", "--no-daemon", "-f", str(volfile), "-p", str(self.root / "glusterd.pid"),
             "-l", str(self.root / "glusterd.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"glusterd did not start: {self.log_tail()}")
            time.sleep(0.05)
        self.cli("volume", "create", self.volume, f"{self.address}:{self.brick}", "force")
        self.cli("volume", "start", self.volume)
        return self

    def log_tail(self, lines=20):
        try:
            return "\n".join((self.root / "glusterd.log").read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def quota_conf(self):
        """glusterd's list of directory quotas: a header, then 17 bytes per limit."""
        path = self.root / "wd" / "vols" / self.volume / "quota.conf"
        return path.read_bytes() if path.exists() else b""

    def brick_entries(self):
        """What the Gluster volume holds (without glusterfs's own .glusterfs)."""
        return sorted(n for n in os.listdir(self.brick) if n != ".glusterfs")

    def _our_processes(self):
        """PIDs of processes serving or mounting our address, glusterd's children included."""
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0]) in ("glusterfs", "glusterfsd", "glusterd") and (
                    self.address in argv or f"--volfile-server={self.address}" in argv):
                pids.append(int(pid))
        return pids

    def stop(self):
        """Stop and delete the volume, stop every process of ours by PID (TERM,
        then KILL), remove our files here and in the shared gluster dirs."""
        if self.proc is not None and self.proc.poll() is None:
            self.cli("volume", "stop", self.volume, "force", check=False)
            self.cli("volume", "delete", self.volume, check=False)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = set(self._our_processes())
            if self.proc is not None and self.proc.poll() is None:
                pids.add(self.proc.pid)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (
                    self._our_processes() or (self.proc and self.proc.poll() is None)):
                time.sleep(0.05)
        for directory in SHARED_DIRS:
            for name in _listing(directory) - self._before[directory]:
                path = os.path.join(directory, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
        shutil.rmtree(self.root, ignore_errors=True)
