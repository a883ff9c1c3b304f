"""What the runtime tests share: a busybox root file system, a network on a fake host, the node
daemon, and checks that a removed container left nothing behind."""

import json
import os
import shutil
import subprocess
import tempfile

from podplumb.install import install
from podplumb.runtime import DaemonProcess
from tests import kernel

BUSYBOX = "/usr/bin/busybox"
APPLETS = ("sh", "httpd", "ip", "sleep", "cat", "echo", "ls", "wget")
PAGE = "hello from podplumb\n"
POD_PORT, HOST_PORT = 80, 18090


def busybox_rootfs(path: str) -> str:
    """A root file system of busybox-static: the applets, and a page for httpd under /www."""
    for directory in ("bin", "etc", "www", "proc", "sys", "dev", "tmp", "run"):
        os.makedirs(os.path.join(path, directory), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(path, "bin", "busybox"))
    for applet in APPLETS:
        os.symlink("busybox", os.path.join(path, "bin", applet))
    with open(os.path.join(path, "www", "index.html"), "w") as f:
        f.write(PAGE)
    return path


def short_tmpdir(prefix: str) -> str:
    """Runtimes put unix sockets under their state dirs: keep paths short."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def conflist(name: str, data_dir: str, bridge: str, subnet: str = "10.88.77.0/24") -> dict:
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": subnet}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}


def in_netns(ns: str, argv, **kw) -> subprocess.CompletedProcess:
    """argv in the network namespace `ns` only (not `ip netns exec`: its fresh /sys hides the cgroup
    mounts runc needs)."""
    return subprocess.run(["nsenter", f"--net={kernel.netns_path(ns)}", *argv], capture_output=True, text=True, **kw)


def plugins(bin_dir: str, mode: str, host_ns: str, workdir: str) -> DaemonProcess | None:
    """Install our executables into bin_dir; with mode 'daemon', forwarding to a daemon started in host_ns."""
    if mode == "standalone":
        install(bin_dir, daemon_socket=None)
        return None
    daemon = DaemonProcess(host_ns, os.path.join(workdir, "cni.sock"), os.path.join(workdir, "daemon.log"))
    daemon.start()
    install(bin_dir, daemon_socket=daemon.socket)
    return daemon


def served_calls(daemon: DaemonProcess | None) -> int:
    return 0 if daemon is None else daemon.log(tail=None).count(" -> exit 0 in ")


def leases(data_dir: str, network: str) -> list[str]:
    path = os.path.join(data_dir, network)
    return sorted(n for n in os.listdir(path) if n[0].isdigit() or ":" in n) if os.path.isdir(path) else []


def host_veths(ns: str) -> list[str]:
    return [l["ifname"] for l in kernel.ip_json("link", "show", ns=ns) if l.get("link_type") == "ether"
            and l["ifname"].startswith("veth")]


def ruleset(ns: str) -> str:
    return kernel.sh("nft", "list", "ruleset", ns=ns).stdout


def unmount_under(root: str):
    """Whatever a runtime left mounted under its tmp dirs (it should have left nothing)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(root.rstrip("/") + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def pod_ipv4(addr_output: str) -> tuple[str, str]:
    """(address/prefix, broadcast) of the first global IPv4 address in `ip -4 addr` output."""
    for line in addr_output.splitlines():
        words = line.split()
        if words and words[0] == "inet" and "brd" in words:
            return words[1], words[words.index("brd") + 1]
    raise AssertionError(f"no IPv4 address with a broadcast: {addr_output}")


def records(state_dir: str) -> list[str]:
    found = []
    for root, _, files in os.walk(state_dir):
        found += [os.path.join(root, f) for f in files]
    return found


def dumps(value) -> str:
    return json.dumps(value, indent=1)
