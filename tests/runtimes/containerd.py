"""A containerd of the test's own (root, state, sockets under a tmp dir; CRI plugin disabled), run on
a fake host (a network namespace), and `ctr` against it. ctr reads /etc/cni/net.d and /opt/cni/bin:
each ctr runs in a private mount namespace where the test's own directories are bind-mounted over
those two, so the machine's are never read nor changed. Reusable by other runtime tests."""

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time

from tests import kernel

CONTAINERD, CTR = shutil.which("containerd"), shutil.which("ctr")
NAMESPACE = "podplumb-test"
IMAGE = "docker.io/podplumb/busybox:test"
START_TIMEOUT = 30

CONFIG = """version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"""


def available() -> str | None:
    """Why containerd cannot run here, or None."""
    if not (CONTAINERD and CTR and shutil.which("runc") and shutil.which("containerd-shim-runc-v2")):
        return "needs containerd, ctr, containerd-shim-runc-v2 and runc"
    if not os.path.isdir("/etc/cni/net.d"):
        return "/etc/cni/net.d must exist for ctr's CNI directories to be replaced in a private mount namespace"
    return None


class Containerd:
    def __init__(self, work: str, host_ns: str, conf_dir: str, opt_dir: str, env: dict | None = None):
        """conf_dir takes the place of /etc/cni/net.d and opt_dir of /opt (so opt_dir/cni/bin is the
        CNI bin dir) for every ctr."""
        self.work, self.host_ns = work, host_ns
        self.conf_dir, self.opt_dir = conf_dir, opt_dir
        self.socket = os.path.join(work, "c.sock")
        self.env = dict(os.environ, **(env or {}))
        self.proc = None

    def start(self) -> "Containerd":
        config = os.path.join(self.work, "config.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(root=os.path.join(self.work, "root"), state=os.path.join(self.work, "state"),
                                  socket=self.socket))
        log = open(os.path.join(self.work, "containerd.log"), "ab")
        self.proc = subprocess.Popen(["nsenter", f"--net={kernel.netns_path(self.host_ns)}", CONTAINERD,
                                      "--config", config], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     env=self.env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while self.ctr("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"containerd did not start: {self.log()}")
            time.sleep(0.1)
        return self

    def ctr(self, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
        """ctr in the fake host's network namespace and a private mount namespace with our CNI dirs."""
        script = ('mount --bind "$1" /etc/cni/net.d && mount --bind "$2" /opt && shift 2 && exec "$@"')
        argv = ["nsenter", f"--net={kernel.netns_path(self.host_ns)}", "unshare", "--mount", "--propagation",
                "private", "sh", "-c", script, "sh", self.conf_dir, self.opt_dir,
                CTR, "--address", self.socket, "--namespace", NAMESPACE, *args]
        run = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and run.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {run.returncode}: {run.stdout}{run.stderr}")
        return run

    def import_image(self, rootfs: str, cmd: list) -> str:
        archive = os.path.join(self.work, "image.tar")
        build_oci_archive(rootfs, cmd, archive)
        self.ctr("images", "import", "--snapshotter", "native", archive)
        return IMAGE

    def remove_everything(self):
        """Tasks killed, containers, images and snapshots deleted (best effort)."""
        for container in self.ctr("containers", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", container, check=False)
            for _ in range(50):
                if self.ctr("tasks", "delete", container, check=False).returncode == 0:
                    break
                time.sleep(0.1)
            self.ctr("containers", "delete", container, check=False)
        self.ctr("images", "remove", IMAGE, check=False)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log(self) -> str:
        try:
            with open(os.path.join(self.work, "containerd.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""


def _blob(layout: tarfile.TarFile, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":")[1])
    info.size = len(data)
    layout.addfile(info, io.BytesIO(data))
    return digest


def build_oci_archive(rootfs: str, cmd: list, archive: str):
    """An OCI image layout archive (one layer: `rootfs`), named IMAGE, for `ctr images import`."""
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as layer:
        layer.add(rootfs, arcname=".")
    layer_bytes = layer_tar.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    compressed = gzip.compress(layer_bytes, mtime=0)
    with tarfile.open(archive, "w") as layout:
        layer_digest = _blob(layout, compressed)
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": cmd},
                             "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
        config_digest = _blob(layout, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                        "size": len(compressed)}]}).encode()
        manifest_digest = _blob(layout, manifest)
        for name, data in (("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
                           ("index.json", json.dumps({"schemaVersion": 2, "manifests": [{
                               "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "digest": manifest_digest, "size": len(manifest),
                               "annotations": {"io.containerd.image.name": IMAGE,
                                               "org.opencontainers.image.ref.name": "test"}}]}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            layout.addfile(info, io.BytesIO(data))
