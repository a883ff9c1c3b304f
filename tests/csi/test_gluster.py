"""Gluster volumes against a real glusterd (tests/csi/glusterd.py) and two
driver processes playing two nodes: node A's controller makes the volumes,
both nodes stage and publish them, node B learns them from the volume context.
"""

import errno
import os
import signal
import subprocess
import time
import uuid

import pytest

from csi.v1 import csi_pb2 as pb
from tests.csi.conftest import (MiB, RPC_TIMEOUT, Code, Driver, Mode, code_of, dispose_root,
                                is_mountpoint, mount_cap, mounts_under, new_root, rpc_error,
                                wait_gone)
from tests.csi.glusterd import Glusterd, PortTaken

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "glusterd", "mount.glusterfs"], capture_output=True).returncode,
    reason="glusterfs-server and glusterfs-client are not installed")

QUOTA_WINDOW = 20      # seconds Gluster may take to notice a directory is over its limit


@pytest.fixture(scope="module")
def glusterd():
    try:
        server = Glusterd()
    except PortTaken as e:
        pytest.skip(str(e))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nodes(glusterd):
    """Two drivers (nodes A and B) managing the Gluster volume through our glusterd."""
    drivers = []
    try:
        for node_id in ("node-a", "node-b"):
            drivers.append(Driver(new_root(), node_id=node_id,
                                  extra_args=["--glusterd-socket", str(glusterd.socket)]).start())
        yield drivers
    finally:
        leftovers = [f for d in drivers for f in dispose_root(d.root, d)]
        assert not leftovers, f"drivers left behind: {leftovers}"


def params(glusterd, **extra):
    return {"kind": "gluster", "glusterServer": glusterd.address,
            "glusterVolume": glusterd.volume, **extra}


def create(drv, parameters, size=32 * MiB, mode=Mode.MULTI_NODE_MULTI_WRITER, name=None, **kw):
    return drv.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name or f"pvc-{uuid.uuid4()}", parameters=parameters,
        capacity_range=pb.CapacityRange(required_bytes=size),
        volume_capabilities=[mount_cap(mode=mode)], **kw), timeout=RPC_TIMEOUT).volume


def delete(drv, volume_id):
    drv.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id), timeout=RPC_TIMEOUT)


class Mounted:
    """One volume staged and published on one node."""

    def __init__(self, drv, vol, mode=Mode.MULTI_NODE_MULTI_WRITER, readonly=False):
        self.drv, self.vol, self.cap, self.readonly = drv, vol, mount_cap(mode=mode), readonly
        self.staging = drv.root / f"staging-{uuid.uuid4().hex[:6]}"
        self.target = drv.root / f"target-{uuid.uuid4().hex[:6]}"
        self.staging.mkdir()

    def up(self):
        self.drv.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=self.vol.volume_id, staging_target_path=str(self.staging),
            volume_capability=self.cap, volume_context=self.vol.volume_context),
            timeout=RPC_TIMEOUT)
        self.drv.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=self.vol.volume_id, staging_target_path=str(self.staging),
            target_path=str(self.target), volume_capability=self.cap, readonly=self.readonly,
            volume_context=self.vol.volume_context), timeout=RPC_TIMEOUT)
        return self

    def down(self):
        """Unpublish and unstage, each twice: the second call finds nothing to do."""
        for _ in range(2):
            self.drv.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
                volume_id=self.vol.volume_id, target_path=str(self.target)), timeout=RPC_TIMEOUT)
        for _ in range(2):
            self.drv.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
                volume_id=self.vol.volume_id, staging_target_path=str(self.staging)),
                timeout=RPC_TIMEOUT)
        assert not is_mountpoint(self.staging) and not is_mountpoint(self.target)
        assert not os.path.lexists(self.target)

    def stats(self):
        return self.drv.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
            volume_id=self.vol.volume_id, volume_path=str(self.target)), timeout=RPC_TIMEOUT)


def write_until_refused(directory, first):
    """Write `first` bytes to one file (1 MiB chunks, fsync), then keep writing
    1 MiB files until Gluster refuses, which it does within its quota window.
    Returns (bytes written, errno)."""
    chunk = b"\xa5" * MiB
    written = 0
    deadline = None
    try:
        with open(directory / "first", "wb") as f:
            while written < first:
                written += f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        deadline = time.monotonic() + QUOTA_WINDOW
        while time.monotonic() < deadline:
            with open(directory / f"more-{written >> 20}", "wb") as f:
                written += f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            time.sleep(0.2)
    except OSError as e:
        return written, e.errno
    return written, 0


def test_shared_volume_across_two_nodes(glusterd, nodes):
    a, b = nodes
    name = f"pvc-{uuid.uuid4()}"
    vol = create(a, params(glusterd), name=name)
    assert create(a, params(glusterd), name=name).volume_id == vol.volume_id   # idempotent
    assert vol.capacity_bytes == 32 * MiB and not vol.accessible_topology
    assert dict(vol.volume_context) == params(glusterd)
    assert glusterd.brick_entries() == [vol.volume_id]
    on_a, on_b = Mounted(a, vol).up(), Mounted(b, vol).up()
    try:
        (on_a.target / "hello").write_text("from node a")
        assert (on_b.target / "hello").read_text() == "from node a"
        assert on_b.stats().usage[0].total == 32 * MiB

        written, err = write_until_refused(on_b.target, first=48 * MiB)
        assert err == errno.EDQUOT, f"{written >> 20} MiB written and no quota error"
        assert written >= 31 * MiB
        with pytest.raises(OSError) as refused:        # on the other node too
            (on_a.target / "from-a").write_bytes(b"x" * MiB)
        assert refused.value.errno == errno.EDQUOT
    finally:
        on_a.down()
        on_b.down()
        delete(a, vol.volume_id)
    delete(a, vol.volume_id)
    assert glusterd.brick_entries() == []
    assert glusterd.quota_conf() == b"GlusterFS Quota conf | version: v1.2\n"  # no limit left
    for drv in nodes:
        assert mounts_under(drv.root) == []


def test_readonly_expand_and_clone(glusterd, nodes):
    a, b = nodes
    vol = create(a, params(glusterd), mode=Mode.MULTI_NODE_READER_ONLY)
    clone = None
    writer = Mounted(a, vol, mode=Mode.MULTI_NODE_MULTI_WRITER).up()
    reader = Mounted(b, vol, mode=Mode.MULTI_NODE_READER_ONLY).up()
    try:
        (writer.target / "data").write_text("shared")
        with pytest.raises(OSError) as refused:
            (reader.target / "data").write_text("changed")
        assert refused.value.errno == errno.EROFS
        resp = a.controller.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=64 * MiB)),
            timeout=RPC_TIMEOUT)
        assert resp.capacity_bytes == 64 * MiB and not resp.node_expansion_required
        assert reader.stats().usage[0].total == 64 * MiB

        source = pb.VolumeContentSource(
            volume=pb.VolumeContentSource.VolumeSource(volume_id=vol.volume_id))
        clone = create(a, params(glusterd), size=64 * MiB, volume_content_source=source)
        copy = Mounted(b, clone).up()
        try:
            assert (copy.target / "data").read_text() == "shared"
            assert copy.stats().usage[0].total == 64 * MiB
        finally:
            copy.down()
        err = rpc_error(a.controller.CreateSnapshot, pb.CreateSnapshotRequest(
            source_volume_id=vol.volume_id, name="snap"))
        assert err.code() == Code.FAILED_PRECONDITION and "gluster" in err.details()
    finally:
        writer.down()
        reader.down()
        for v in (clone, vol):
            if v is not None:
                delete(a, v.volume_id)
    assert glusterd.brick_entries() == []


def test_restart_keeps_mounts_and_reboot_restages(glusterd, nodes):
    a, b = nodes
    vol = create(a, params(glusterd))
    on_b = Mounted(b, vol).up()
    try:
        (on_b.target / "kept").write_text("before")
        client = _fuse_clients(on_b.staging)
        b.restart()
        assert _fuse_clients(on_b.staging) == client            # the same mount, untouched
        assert (on_b.target / "kept").read_text() == "before"

        b.stop()                                              # a reboot: mounts gone, state kept
        for path in (on_b.target, on_b.staging):
            subprocess.run(["umount", str(path)], check=True)
        b.start()
        assert is_mountpoint(on_b.staging) and is_mountpoint(on_b.target)
        assert (on_b.target / "kept").read_text() == "before"
        assert not on_b.stats().volume_condition.abnormal

        clients = _fuse_clients(on_b.staging)
        for pid in clients:
            os.kill(pid, signal.SIGKILL)        # the FUSE client dies: reported, and undone
        wait_gone(clients)                      # by unpublish and unstage, also after a restart
        with pytest.raises(OSError) as dead:
            os.statvfs(on_b.target)
        assert dead.value.errno == errno.ENOTCONN
        b.restart()
        status = b.controller.ControllerGetVolume(pb.ControllerGetVolumeRequest(
            volume_id=vol.volume_id), timeout=RPC_TIMEOUT).status
        assert status.volume_condition.abnormal
        assert "client does not answer" in status.volume_condition.message
        on_b.down()
        on_b.up()                               # and staged afresh
        assert (on_b.target / "kept").read_text() == "before"
    finally:
        if b.proc.poll() is not None:        # failed while node B was down
            b.start()
        on_b.down()
        delete(a, vol.volume_id)
    assert glusterd.brick_entries() == []


def _fuse_clients(mountpoint):
    """PIDs of the glusterfs processes of a mount point (the client of an
    earlier, unmounted mount at the same path can linger for a moment)."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"glusterfs") and str(mountpoint).encode() in argv:
            pids.add(int(pid))
    return pids


def test_bad_requests_leave_nothing(glusterd, nodes):
    a, _ = nodes

    def refused(parameters, code, *words, mode=Mode.MULTI_NODE_MULTI_WRITER, block=False):
        cap = mount_cap(mode=mode)
        if block:
            cap = pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(),
                                      access_mode=cap.access_mode)
        err = rpc_error(a.controller.CreateVolume, pb.CreateVolumeRequest(
            name=f"pvc-{uuid.uuid4()}", parameters=parameters, volume_capabilities=[cap],
            capacity_range=pb.CapacityRange(required_bytes=32 * MiB)))
        assert err.code() == code, err.details()
        for word in words:
            assert word in err.details()

    refused({"kind": "gluster", "glusterVolume": glusterd.volume},
            Code.INVALID_ARGUMENT, "glusterServer")
    refused({"kind": "gluster", "glusterServer": glusterd.address},
            Code.INVALID_ARGUMENT, "glusterVolume")
    refused(params(glusterd, glusterServer="bad host!"), Code.INVALID_ARGUMENT, "bad host!")
    refused(params(glusterd, glusterVolume="../etc"), Code.INVALID_ARGUMENT, "../etc")
    refused(params(glusterd, glusterOption="x"), Code.INVALID_ARGUMENT, "glusterOption")
    refused(params(glusterd), Code.INVALID_ARGUMENT, "block", block=True)
    # nothing listens on port 1 of a loopback address
    refused(params(glusterd, glusterServer="127.0.0.1:1"), Code.UNAVAILABLE,
            "127.0.0.1:1", glusterd.volume)
    refused(params(glusterd, glusterVolume="nosuchvolume"), Code.FAILED_PRECONDITION,
            "nosuchvolume", glusterd.address)
    # a node refuses a volume context that is not a Gluster volume's
    assert code_of(a.node.NodeStageVolume, pb.NodeStageVolumeRequest(
        volume_id="vol-" + "0" * 32, staging_target_path=str(a.root / "s"),
        volume_capability=mount_cap(), volume_context={"kind": "gluster"})) \
        == Code.INVALID_ARGUMENT

    def capacity(parameters):
        return a.controller.GetCapacity(pb.GetCapacityRequest(
            parameters=parameters, volume_capabilities=[mount_cap()]),
            timeout=RPC_TIMEOUT).available_capacity

    brick = os.statvfs(glusterd.brick)
    assert 0 < capacity(params(glusterd)) <= brick.f_blocks * brick.f_frsize
    assert capacity(params(glusterd, glusterVolume="nosuchvolume")) == 0

    listed = a.controller.ListVolumes(pb.ListVolumesRequest(), timeout=RPC_TIMEOUT).entries
    assert [e.volume.volume_id for e in listed] == []
    assert glusterd.brick_entries() == []
    assert mounts_under(a.root) == []
    controller_mounts = a.state_dir / "gluster"
    assert not controller_mounts.exists() or os.listdir(controller_mounts) == []

