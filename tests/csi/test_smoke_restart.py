"""Smoke: kill -9 and simulated reboots lose nothing, and the driver repairs itself."""

import concurrent.futures
import os
import stat
import time

import grpc
import pytest

from csi import mounts
from csi.launcher import temporary_driver
from csi.v1 import csi_pb2 as pb

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts and loop devices")

MiB = 1 << 20
MODE = pb.VolumeCapability.AccessMode
MOUNT = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(),
                            access_mode=MODE(mode=MODE.SINGLE_NODE_WRITER))
BLOCK = pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(),
                            access_mode=MODE(mode=MODE.SINGLE_NODE_WRITER))


@pytest.fixture
def driver():
    with temporary_driver(prefix="podplumb-csi-smoke-") as drv:
        yield drv


class Published:
    """One volume created, staged and published through the driver."""

    def __init__(self, drv, name, kind, cap):
        self.drv, self.cap = drv, cap
        self.id = drv.controller.CreateVolume(pb.CreateVolumeRequest(
            name=name, volume_capabilities=[cap], parameters={"kind": kind},
            capacity_range=pb.CapacityRange(required_bytes=32 * MiB))).volume.volume_id
        self.staging = os.path.join(drv.root, "staging", name)
        self.target = os.path.join(drv.root, "pods", name, "vol")
        os.makedirs(self.staging)
        os.makedirs(os.path.dirname(self.target))
        self.stage()
        self.publish()

    def stage(self):
        self.drv.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=self.id, staging_target_path=self.staging, volume_capability=self.cap))

    def publish(self):
        self.drv.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=self.id, staging_target_path=self.staging, target_path=self.target,
            volume_capability=self.cap))

    def write(self, data):
        if self.cap.HasField("block"):
            fd = os.open(self.target, os.O_WRONLY)
            try:
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with open(os.path.join(self.target, "data"), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

    def read(self, size):
        if self.cap.HasField("block"):
            fd = os.open(self.target, os.O_RDONLY)
            try:
                return os.pread(fd, size, 0)
            finally:
                os.close(fd)
        with open(os.path.join(self.target, "data"), "rb") as f:
            return f.read()

    def teardown(self):
        self.drv.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
            volume_id=self.id, target_path=self.target))
        self.drv.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=self.id, staging_target_path=self.staging))
        self.drv.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=self.id))


def volumes(drv):
    return [
        Published(drv, "bind", "bind", MOUNT),
        Published(drv, "ext4", "loop", MOUNT),
        Published(drv, "block", "loop", BLOCK),
    ]


def simulate_reboot(drv):
    """What a reboot does to us: every mount and loop device is gone (but for
    the temp root's own shared mount, see csi.launcher)."""
    def driver_mounts():
        return [p for p in mounts.mounts_under(drv.root) if p != os.path.realpath(drv.root)]

    for point in driver_mounts():
        mounts.run("umount", point)
    for device, back in mounts.loop_devices().items():
        if back.startswith(drv.root):
            mounts.loop_detach(device)
    assert not driver_mounts()


def test_kill_keeps_published_volumes(driver):
    vols = volumes(driver)
    data = {v.id: os.urandom(4096) for v in vols}
    for v in vols:
        v.write(data[v.id])
    driver.kill()
    for v in vols:                               # pods keep their data while we are down
        assert v.read(4096) == data[v.id]
    driver.start()
    for v in vols:                               # the CO repeats calls: all idempotent
        v.stage()
        v.publish()
        assert v.read(4096) == data[v.id]
    listed = driver.controller.ListVolumes(pb.ListVolumesRequest()).entries
    assert sorted(e.volume.volume_id for e in listed) == sorted(data)
    assert all(e.status.published_node_ids == ["node-1"] for e in listed)
    for v in vols:
        v.teardown()


def test_reboot_recovery(driver):
    vols = volumes(driver)
    data = {v.id: os.urandom(4096) for v in vols}
    for v in vols:
        v.write(data[v.id])
    driver.kill()
    simulate_reboot(driver)
    driver.start()                               # reconcile re-attaches and re-mounts
    for v in vols:
        assert mounts.is_mountpoint(v.target)
        assert v.read(4096) == data[v.id]
    assert stat.S_ISBLK(os.stat(vols[2].target).st_mode)

    driver.kill()                                # and once more, with the CO redoing it all
    simulate_reboot(driver)
    os.rmdir(vols[0].target)                     # the kubelet removed one pod meanwhile
    driver.start()
    for v in vols:
        v.stage()
        v.publish()
        assert v.read(4096) == data[v.id]
    for v in vols:
        v.teardown()


def test_kill_during_creates_leaves_consistent_state(driver):
    names = [f"pvc-{i}" for i in range(12)]

    def create(name):
        return driver.controller.CreateVolume(pb.CreateVolumeRequest(
            name=name, volume_capabilities=[MOUNT], parameters={"kind": "loop"},
            capacity_range=pb.CapacityRange(required_bytes=16 * MiB)))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(create, n) for n in names]
        time.sleep(0.15)
        driver.kill()
        for f in futures:
            try:
                f.result()
            except (grpc.RpcError, ValueError):   # ValueError: channel closed by kill()
                pass
    driver.start()
    ids = {create(n).volume.volume_id for n in names}        # retried by the CO
    assert len(ids) == len(names)
    listed = {e.volume.volume_id for e in
              driver.controller.ListVolumes(pb.ListVolumesRequest()).entries}
    assert listed == ids
    files = sorted(os.listdir(os.path.join(driver.state_dir, "volumes")))
    assert files == sorted(i + ".img" for i in ids)
    for vid in ids:
        driver.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
