"""Fixtures of the CSI conformance suite.

The driver under test is a real process (`python -m csi.server`) serving on a
real unix socket in a private temp dir; the tests talk to it only through
gRPC, as a CO would, and look at the host (mounts, loop devices, files) to
check what it did.

Two promises every test keeps, pass or fail:
- whatever a test created through the driver is unpublished, unstaged and
  deleted at teardown (`csi` fixture);
- afterwards no loop device backed by a file of the test's state dir stays
  attached and nothing stays mounted under the temp dirs. If the driver left
  something, the fixture removes it itself (so the host is as found) and
  then fails the test.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import pytest

from csi.v1 import csi_pb2 as pb
from csi.v1 import csi_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
GiB = 1 << 30
RPC_TIMEOUT = 120          # seconds; mkfs of a few hundred MiB takes well under that
START_TIMEOUT = 30
CAPACITY = 16 * GiB        # --capacity of every test driver: accounting is exact
TOPOLOGY_KEY = "topology.podplumb.csi.io/node"

Mode = pb.VolumeCapability.AccessMode.Mode


def _has_cap(bit):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    return False


# Growing a *mounted* ext4 (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE, which
# some containers drop (this CI machine does). Without it the driver must
# refuse with FAILED_PRECONDITION while published, and grow ext4 by
# re-staging instead (docs/csi-contract.md). Tests check whichever applies.
EXT4_ONLINE_GROW = _has_cap(24)
Code = grpc.StatusCode


# --------------------------------------------------------------- volume kinds
# The four kinds of volume the suite exercises (docs/csi-contract.md).
# size: small, but xfs needs >= 300 MiB on current xfsprogs.
KINDS = {
    "bind": dict(params={"kind": "bind"}, fs_type="", block=False, size=32 * MiB),
    "ext4": dict(params={"kind": "loop"}, fs_type="ext4", block=False, size=48 * MiB),
    "xfs": dict(params={"kind": "loop"}, fs_type="xfs", block=False, size=320 * MiB),
    "block": dict(params={"kind": "loop"}, fs_type="", block=True, size=32 * MiB),
}


def mount_cap(fs_type="", mode=Mode.SINGLE_NODE_WRITER, flags=()):
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode))


def block_cap(mode=Mode.SINGLE_NODE_WRITER):
    return pb.VolumeCapability(
        block=pb.VolumeCapability.BlockVolume(),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode))


def kind_cap(kind, mode=Mode.SINGLE_NODE_WRITER):
    spec = KINDS[kind]
    return block_cap(mode) if spec["block"] else mount_cap(spec["fs_type"], mode)


def code_of(call, request, timeout=RPC_TIMEOUT):
    """The gRPC status code of one call (OK when it succeeds)."""
    try:
        call(request, timeout=timeout)
    except grpc.RpcError as err:
        return err.code()
    return Code.OK


def rpc_error(call, request, timeout=RPC_TIMEOUT):
    """The RpcError of a call that must fail."""
    try:
        call(request, timeout=timeout)
    except grpc.RpcError as err:
        return err
    pytest.fail(f"{type(request).__name__} succeeded but should have failed")


# ---------------------------------------------------------- host inspection
def _unescape_mountinfo(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# Each test root is a shared mount of itself (see new_root); those mounts are
# the tests' own, not the driver's, and are left out of every listing.
SHARED_ROOTS = set()


def mounts_under(root):
    """Mount points at or below `root`, from /proc/self/mountinfo (deepest last)."""
    root = os.path.realpath(str(root))
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if (point == root or point.startswith(root + "/")) and point not in SHARED_ROOTS:
                found.append(point)
    return found


def mount_count(path):
    """How many mounts are stacked exactly at `path`."""
    path = os.path.realpath(str(path))
    return sum(1 for p in mounts_under(path) if p == path)


def is_mountpoint(path):
    return mount_count(path) > 0


def loops_backed_under(root):
    """{loop device: backing file} for attached loop devices whose backing
    file lies under `root` (including backing files deleted since)."""
    root = os.path.realpath(str(root))
    out = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"],
                         capture_output=True, text=True, check=True).stdout
    devices = json.loads(out)["loopdevices"] if out.strip() else []
    found = {}
    for dev in devices:
        back = (dev.get("back-file") or "").removesuffix(" (deleted)")
        if back == root or back.startswith(root + "/"):
            found[dev["name"]] = back
    return found


def loops_for_file(path):
    """`losetup -j FILE`: loop devices attached to exactly that file."""
    out = subprocess.run(["losetup", "-j", str(path)], capture_output=True, text=True).stdout
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


def settle(probe, timeout=5.0):
    """Poll `probe()` until it returns something falsy; return its last value.
    Detaching a loop device completes asynchronously in the kernel (tens of
    milliseconds after `losetup -d` returned, when it was open a moment ago)."""
    deadline = time.monotonic() + timeout
    value = probe()
    while value and time.monotonic() < deadline:
        time.sleep(0.02)
        value = probe()
    return value


def force_clean(root):
    """Unmount everything under `root` and detach loop devices backed by files
    under it. Returns a description of what had to be removed ([] if clean)."""
    leftovers = []
    for point in sorted(set(mounts_under(root)), key=len, reverse=True):
        while is_mountpoint(point):
            leftovers.append(f"mount {point}")
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
                break
    for dev, back in loops_backed_under(root).items():
        leftovers.append(f"loop {dev} -> {back}")
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    return leftovers


def driver_children(pid):
    """PIDs of the running children of `pid` (mkfs, mount, losetup ...)."""
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except FileNotFoundError:
        pass
    return kids


def wait_gone(pids, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in pids if os.path.exists(f"/proc/{p}")]:
            return
        time.sleep(0.05)


# ------------------------------------------------------------- driver process
class Driver:
    """One driver process with its own state dir and socket under `root`."""

    def __init__(self, root, node_id="node-test", capacity=CAPACITY, extra_args=()):
        self.root = Path(root)
        self.state_dir = self.root / "state"
        self.socket = self.root / "csi.sock"
        self.log_path = self.root / "driver.log"
        self.node_id = node_id
        self.capacity = capacity
        self.extra_args = list(extra_args)
        self.proc = None
        self.channel = None
        self.starts = 0

    # -- process
    def start(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "csi.server",
               "--endpoint", f"unix://{self.socket}",
               "--node-id", self.node_id,
               "--state-dir", str(self.state_dir), "--kubelet-dir", str(self.root),
               *self.extra_args]
        if self.capacity is not None:
            cmd += ["--capacity", str(self.capacity)]
        log = open(self.log_path, "ab")
        log.write(f"\n==== start {self.starts}: {' '.join(cmd)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.starts += 1
        self._connect()
        return self

    def _connect(self):
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"driver exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                self._close_channel()
                self.channel = grpc.insecure_channel(f"unix://{self.socket}")
                self.identity = pb_grpc.IdentityStub(self.channel)
                self.controller = pb_grpc.ControllerStub(self.channel)
                self.node = pb_grpc.NodeStub(self.channel)
                self.group = pb_grpc.GroupControllerStub(self.channel)
                try:
                    resp = self.identity.Probe(pb.ProbeRequest(), timeout=2)
                    if not resp.HasField("ready") or resp.ready.value:
                        return
                except grpc.RpcError as err:
                    last = err
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"driver not ready after {START_TIMEOUT}s ({last}):\n{self.log_tail()}")

    def _close_channel(self):
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def stop(self):
        """SIGTERM, then SIGKILL after 15 s."""
        self._close_channel()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill9(self):
        """SIGKILL the driver and wait until the children it had running are
        gone too (so that the host is quiet before the next start)."""
        self._close_channel()
        kids = driver_children(self.proc.pid)
        self.proc.kill()
        self.proc.wait(10)
        wait_gone(kids)

    def restart(self):
        self.stop()
        return self.start()

    def log_tail(self, lines=25):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def new_root(prefix="ppcsi-"):
    """A temp dir made a shared mount of itself. Other processes on the machine
    unshare their mount namespace all the time (daemons, runtimes); with a
    private root each such namespace would keep a copy of the driver's mounts
    and hold its loop devices. In a shared root, unmounts reach those copies."""
    # short paths: a unix socket path must fit in 108 bytes
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    make_shared(root)
    SHARED_ROOTS.add(os.path.realpath(root))
    return root


def make_shared(path):
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", "--make-shared", str(path)], check=True)


def _unmount_root(root):
    real = os.path.realpath(str(root))
    if real in SHARED_ROOTS:
        if subprocess.run(["umount", real], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", real], capture_output=True)
        SHARED_ROOTS.discard(real)


def dispose_root(root, driver=None):
    """Stop the driver, remove what it left on the host, delete the dir.
    Returns the leftovers that had to be removed."""
    if driver is not None:
        driver.stop()
    leftovers = force_clean(root)
    _unmount_root(root)
    if mounts_under(root):   # a lazy unmount still pending: never rmtree through a mount
        return leftovers + [f"still mounted: {mounts_under(root)}"]
    shutil.rmtree(root, ignore_errors=True)
    return leftovers


@pytest.fixture(scope="module")
def driver():
    """A driver shared by the tests of one module (each test cleans up after itself)."""
    root = new_root()
    drv = Driver(root).start()
    yield drv
    leftovers = dispose_root(root, drv)
    assert not leftovers, f"driver left behind after module: {leftovers}"


@pytest.fixture
def own_driver():
    """A driver for one test only (restart and crash tests)."""
    root = new_root()
    drv = Driver(root).start()
    yield drv
    leftovers = dispose_root(root, drv)
    assert not leftovers, f"driver left behind: {leftovers}"


# ------------------------------------------------------------------ the client
class Csi:
    """What one test does through the driver, remembered so that teardown can
    undo it. Helper methods check the basic success contract of each RPC."""

    def __init__(self, drv, workdir):
        self.drv = drv
        self.work = Path(workdir)
        self.volumes = []        # volume IDs
        self.snapshots = []      # snapshot IDs
        self.groups = []         # group snapshot IDs
        self.published = []      # (volume ID, target path)
        self.staged = []         # (volume ID, staging path)
        self.guarded = []        # paths outside the temp dirs that must stay absent

    # stubs of the current driver process (they change after a restart)
    @property
    def identity(self):
        return self.drv.identity

    @property
    def controller(self):
        return self.drv.controller

    @property
    def node(self):
        return self.drv.node

    @property
    def group(self):
        return self.drv.group

    def path(self, name):
        """A fresh path under the test's work dir (not created)."""
        return self.work / f"{name}-{uuid.uuid4().hex[:8]}"

    def dir(self, name):
        p = self.path(name)
        p.mkdir(parents=True)
        return p

    def guard(self, path):
        """`path` (outside the temp dirs) does not exist and must not come to
        exist; teardown removes whatever the driver made there and fails."""
        assert not os.path.lexists(path), f"{path} exists already"
        self.guarded.append(str(path))
        return path

    def undo_escapes(self):
        """Unmount and remove what appeared at guarded paths; report it."""
        escaped = []
        for path in self.guarded:
            while is_mountpoint(path):
                escaped.append(f"mounted on {path}")
                if subprocess.run(["umount", path], capture_output=True).returncode:
                    subprocess.run(["umount", "-l", path], capture_output=True)
                    break
            if os.path.lexists(path):
                escaped.append(f"created {path}")
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
        return escaped

    @staticmethod
    def name(prefix="pvc"):
        return f"{prefix}-{uuid.uuid4()}"

    # -- controller
    def create_request(self, kind, name=None, size=None, limit=0, source=None, caps=None,
                       params=None, **extra):
        spec = KINDS[kind]
        req = pb.CreateVolumeRequest(
            name=self.name() if name is None else name,
            capacity_range=pb.CapacityRange(
                required_bytes=spec["size"] if size is None else size, limit_bytes=limit),
            volume_capabilities=caps if caps is not None else [kind_cap(kind)],
            parameters=spec["params"] if params is None else params, **extra)
        if source is not None:
            req.volume_content_source.CopyFrom(source)
        return req

    def create(self, kind="ext4", **kw):
        """CreateVolume; returns the `Volume` message."""
        req = kw.pop("request", None) or self.create_request(kind, **kw)
        vol = self.controller.CreateVolume(req, timeout=RPC_TIMEOUT).volume
        self.track_volume(vol.volume_id)
        return vol

    def track_volume(self, volume_id):
        if volume_id not in self.volumes:
            self.volumes.append(volume_id)

    def delete(self, volume_id):
        self.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id), timeout=RPC_TIMEOUT)

    def snapshot(self, volume_id, name=None):
        snap = self.controller.CreateSnapshot(
            pb.CreateSnapshotRequest(source_volume_id=volume_id, name=name or self.name("snap")),
            timeout=RPC_TIMEOUT).snapshot
        if snap.snapshot_id not in self.snapshots:
            self.snapshots.append(snap.snapshot_id)
        return snap

    def group_snapshot(self, volume_ids, name=None):
        """CreateVolumeGroupSnapshot; returns the VolumeGroupSnapshot message."""
        group = self.group.CreateVolumeGroupSnapshot(pb.CreateVolumeGroupSnapshotRequest(
            name=name or self.name("group"), source_volume_ids=list(volume_ids)),
            timeout=RPC_TIMEOUT).group_snapshot
        if group.group_snapshot_id not in self.groups:
            self.groups.append(group.group_snapshot_id)
        return group

    def delete_snapshot(self, snapshot_id):
        self.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snapshot_id),
                                       timeout=RPC_TIMEOUT)

    def get_volume(self, volume_id):
        return self.controller.ControllerGetVolume(
            pb.ControllerGetVolumeRequest(volume_id=volume_id), timeout=RPC_TIMEOUT)

    def capacity(self, **kw):
        return self.controller.GetCapacity(pb.GetCapacityRequest(**kw),
                                           timeout=RPC_TIMEOUT).available_capacity

    def expand(self, volume_id, size, cap=None):
        req = pb.ControllerExpandVolumeRequest(
            volume_id=volume_id, capacity_range=pb.CapacityRange(required_bytes=size))
        if cap is not None:
            req.volume_capability.CopyFrom(cap)
        return self.controller.ControllerExpandVolume(req, timeout=RPC_TIMEOUT)

    def list_all_volumes(self, page=0):
        return _paginate(self.controller.ListVolumes, pb.ListVolumesRequest, page,
                         lambda e: e.volume.volume_id)

    def list_all_snapshots(self, page=0, **kw):
        return _paginate(self.controller.ListSnapshots, pb.ListSnapshotsRequest, page,
                         lambda e: e.snapshot.snapshot_id, **kw)

    # -- node
    def stage_request(self, volume_id, staging, cap):
        return pb.NodeStageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging),
                                         volume_capability=cap)

    def stage(self, volume_id, cap, staging=None):
        staging = staging or self.dir("staging")
        self.node.NodeStageVolume(self.stage_request(volume_id, staging, cap), timeout=RPC_TIMEOUT)
        if (volume_id, str(staging)) not in self.staged:
            self.staged.append((volume_id, str(staging)))
        return staging

    def unstage(self, volume_id, staging):
        self.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging)), timeout=RPC_TIMEOUT)
        if (volume_id, str(staging)) in self.staged:
            self.staged.remove((volume_id, str(staging)))

    def publish_request(self, volume_id, staging, target, cap, readonly=False):
        return pb.NodePublishVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging), target_path=str(target),
            volume_capability=cap, readonly=readonly)

    def publish(self, volume_id, staging, cap, target=None, readonly=False):
        target = target or self.path("target")   # the SP creates the target itself
        self.node.NodePublishVolume(self.publish_request(volume_id, staging, target, cap, readonly),
                                    timeout=RPC_TIMEOUT)
        if (volume_id, str(target)) not in self.published:
            self.published.append((volume_id, str(target)))
        return target

    def unpublish(self, volume_id, target):
        self.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
            volume_id=volume_id, target_path=str(target)), timeout=RPC_TIMEOUT)
        if (volume_id, str(target)) in self.published:
            self.published.remove((volume_id, str(target)))

    def stats(self, volume_id, path, staging=""):
        return self.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
            volume_id=volume_id, volume_path=str(path), staging_target_path=str(staging)),
            timeout=RPC_TIMEOUT)

    def node_expand(self, volume_id, path, size, staging="", cap=None):
        req = pb.NodeExpandVolumeRequest(
            volume_id=volume_id, volume_path=str(path), staging_target_path=str(staging),
            capacity_range=pb.CapacityRange(required_bytes=size))
        if cap is not None:
            req.volume_capability.CopyFrom(cap)
        return self.node.NodeExpandVolume(req, timeout=RPC_TIMEOUT)

    # -- convenience: a volume ready for I/O
    def ready(self, kind, readonly=False, **create_kw):
        """Create, stage and publish a volume of `kind`; returns (volume, staging, target)."""
        vol = self.create(kind, **create_kw)
        cap = kind_cap(kind)
        staging = self.stage(vol.volume_id, cap)
        target = self.publish(vol.volume_id, staging, cap, readonly=readonly)
        return vol, staging, target

    def release(self, volume_id, staging, target):
        self.unpublish(volume_id, target)
        self.unstage(volume_id, staging)

    # -- teardown
    def cleanup(self):
        """Undo everything; returns the errors met on the way."""
        errors = []

        def attempt(what, fn):
            try:
                fn()
            except grpc.RpcError as err:
                errors.append(f"{what}: {err.code().name} {err.details()}")
            except Exception as err:  # driver gone, channel closed ...
                errors.append(f"{what}: {err!r}")

        if self.drv.proc is None or self.drv.proc.poll() is not None:
            attempt("restart driver for cleanup", self.drv.start)
        for vol, target in reversed(self.published[:]):
            attempt(f"NodeUnpublish {vol} {target}", lambda: self.unpublish(vol, target))
        for vol, staging in reversed(self.staged[:]):
            attempt(f"NodeUnstage {vol} {staging}", lambda: self.unstage(vol, staging))
        for gid in self.groups:
            attempt(f"DeleteVolumeGroupSnapshot {gid}", lambda: self.group.DeleteVolumeGroupSnapshot(
                pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid), timeout=RPC_TIMEOUT))
        for snap in self.snapshots:
            attempt(f"DeleteSnapshot {snap}", lambda: self.delete_snapshot(snap))
        for vol in self.volumes:
            attempt(f"DeleteVolume {vol}", lambda: self.delete(vol))
        return errors


def _paginate(call, request_type, page, key, **filters):
    """All entries of a List* RPC, following next_token; checks the page size."""
    entries, token, seen_tokens = [], "", set()
    while True:
        resp = call(request_type(max_entries=page, starting_token=token, **filters),
                    timeout=RPC_TIMEOUT)
        if page:
            assert len(resp.entries) <= page, "more entries than max_entries"
        entries.extend(resp.entries)
        token = resp.next_token
        if not token:
            return entries
        assert token not in seen_tokens, "pagination loops"
        seen_tokens.add(token)


@pytest.fixture
def csi(driver, request):
    """The test's view of the module driver; cleans up and checks the host."""
    yield from _csi_session(driver, request)


@pytest.fixture
def csi_own(own_driver, request):
    """Same as `csi`, on a driver of the test's own (may be killed/restarted)."""
    yield from _csi_session(own_driver, request)


def _csi_session(drv, request):
    work = drv.root / "work" / request.node.name[:40].replace("/", "_")
    work.mkdir(parents=True, exist_ok=True)
    session = Csi(drv, work)
    yield session
    escaped = session.undo_escapes()
    errors = session.cleanup()
    # What the driver must have undone by now: every loop device of its
    # state dir detached, nothing mounted under the temp root.
    def attached():
        found = loops_backed_under(drv.state_dir)
        for img in drv.state_dir.rglob("*.img"):
            found.update({dev: str(img) for dev in loops_for_file(img)})
        return found
    loops = settle(attached)
    mounts = mounts_under(drv.root)
    leftovers = force_clean(drv.root)
    shutil.rmtree(work, ignore_errors=True) if not mounts_under(work) else None
    problems = []
    if escaped:
        problems.append(f"the driver wrote outside the temp dirs: {escaped}")
    if errors:
        problems.append(f"cleanup RPCs failed: {errors}")
    if loops:
        problems.append(f"loop devices left attached: {loops}")
    if mounts:
        problems.append(f"mounts left: {mounts}")
    if leftovers and not (loops or mounts):
        problems.append(f"leftovers removed: {leftovers}")
    assert not problems, "; ".join(problems) + "\n--- driver log ---\n" + drv.log_tail()
