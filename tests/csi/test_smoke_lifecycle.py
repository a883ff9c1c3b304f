"""Smoke: full volume lifecycle per kind against the real kernel, via the gRPC socket."""

import os
import stat

import grpc
import pytest

from csi import mounts
from csi.launcher import temporary_driver
from csi.v1 import csi_pb2 as pb

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts and loop devices")

MiB = 1 << 20
MODE = pb.VolumeCapability.AccessMode


def mount_cap(fs_type="", mode=MODE.SINGLE_NODE_WRITER, flags=()):
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=MODE(mode=mode))


def block_cap(mode=MODE.SINGLE_NODE_WRITER):
    return pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(), access_mode=MODE(mode=mode))


def lingering_loops(root):
    """Loop devices over files under root that will not go away by themselves.

    A device that another mount namespace still holds (a copy of one of our
    mounts, made by an unrelated process) is already marked auto-clear and
    vanishes when that process lets go: it is not counted."""
    found = []
    for device, back in mounts.loop_devices().items():
        name = os.path.basename(device)
        with open(f"/sys/block/{name}/loop/autoclear") as f:
            if back.startswith(root) and f.read().strip() != "1":
                found.append(device)
    return found


@pytest.fixture
def driver():
    with temporary_driver(prefix="podplumb-csi-smoke-") as drv:
        yield drv
    assert not lingering_loops(drv.root)
    assert not mounts.mounts_under(drv.root)
    assert not os.path.exists(drv.root)


def create(drv, name, cap, size, kind=None, source=None):
    req = pb.CreateVolumeRequest(name=name, volume_capabilities=[cap],
                                 capacity_range=pb.CapacityRange(required_bytes=size))
    if kind:
        req.parameters["kind"] = kind
    if source:
        req.volume_content_source.snapshot.snapshot_id = source
    return drv.controller.CreateVolume(req).volume


def paths(drv, label):
    staging = os.path.join(drv.root, "plugins", label, "globalmount")
    target = os.path.join(drv.root, "pods", label, "mount")
    os.makedirs(staging, exist_ok=True)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    return staging, target


def stage_publish(drv, vol_id, cap, label, readonly=False):
    staging, target = paths(drv, label)
    drv.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vol_id, staging_target_path=staging, volume_capability=cap))
    publish = pb.NodePublishVolumeRequest(volume_id=vol_id, staging_target_path=staging,
                                          target_path=target, volume_capability=cap,
                                          readonly=readonly)
    drv.node.NodePublishVolume(publish)
    drv.node.NodePublishVolume(publish)          # idempotent
    return staging, target


def unpublish_unstage(drv, vol_id, staging, target):
    for _ in range(2):                            # idempotent
        drv.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vol_id,
                                                                   target_path=target))
        drv.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=vol_id,
                                                               staging_target_path=staging))
    assert not os.path.exists(target)
    assert not mounts.is_mountpoint(staging)


def write_read(path, data):
    with open(path, "wb") as f:
        f.write(data)
    with open(path, "rb") as f:
        return f.read()


def fs_bytes(path):
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def expand_file_system(drv, vol_id, cap, new_size, staging, target):
    """Online where the kernel lets us; ext4 without CAP_SYS_RESOURCE grows unpublished."""
    before = fs_bytes(target)
    grown = drv.controller.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=vol_id, capacity_range=pb.CapacityRange(required_bytes=new_size)))
    assert grown.capacity_bytes == new_size and grown.node_expansion_required
    expand = pb.NodeExpandVolumeRequest(volume_id=vol_id, volume_path=target,
                                        capacity_range=pb.CapacityRange(required_bytes=new_size))
    if cap.mount.fs_type == "xfs" or mounts.can_grow_ext4_online():
        assert drv.node.NodeExpandVolume(expand).capacity_bytes == new_size
    else:
        with pytest.raises(grpc.RpcError) as e:
            drv.node.NodeExpandVolume(expand)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        drv.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vol_id,
                                                                   target_path=target))
        expand.volume_path = staging
        drv.node.NodeExpandVolume(expand)
        drv.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=vol_id, staging_target_path=staging, target_path=target,
            volume_capability=cap))
    assert fs_bytes(target) > before + 32 * MiB      # the test grows by 64 MiB


@pytest.mark.parametrize("kind,fs_type,size", [
    ("bind", "", 16 * MiB),
    ("loop", "ext4", 64 * MiB),
    ("loop", "xfs", 300 * MiB),
])
def test_mount_lifecycle(driver, kind, fs_type, size):
    cap = mount_cap(fs_type)
    vol = create(driver, "vol-a", cap, size, kind=kind)
    assert vol.capacity_bytes == size and vol.volume_context["kind"] == kind
    assert create(driver, "vol-a", cap, size, kind=kind).volume_id == vol.volume_id

    staging, target = stage_publish(driver, vol.volume_id, cap, "a")
    assert mounts.is_mountpoint(target)
    if kind == "loop":
        assert [e.fstype for e in mounts.mountinfo() if e.mountpoint == target] == [fs_type]
    data = os.urandom(MiB)
    assert write_read(os.path.join(target, "f"), data) == data

    stats = driver.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
        volume_id=vol.volume_id, volume_path=target))
    units = {u.unit for u in stats.usage}
    assert units == {pb.VolumeUsage.BYTES, pb.VolumeUsage.INODES}
    assert not stats.volume_condition.abnormal

    snap = driver.controller.CreateSnapshot(pb.CreateSnapshotRequest(
        source_volume_id=vol.volume_id, name="snap-a")).snapshot
    assert snap.ready_to_use and snap.source_volume_id == vol.volume_id
    restored = create(driver, "vol-b", cap, size, kind=kind, source=snap.snapshot_id)
    r_staging, r_target = stage_publish(driver, restored.volume_id, cap, "b", readonly=True)
    with open(os.path.join(r_target, "f"), "rb") as f:
        assert f.read() == data
    with pytest.raises(OSError):
        open(os.path.join(r_target, "g"), "w")   # published read-only

    if kind == "loop":
        expand_file_system(driver, vol.volume_id, cap, size + 64 * MiB, staging, target)

    with pytest.raises(grpc.RpcError) as e:      # still in use
        driver.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    unpublish_unstage(driver, restored.volume_id, r_staging, r_target)
    unpublish_unstage(driver, vol.volume_id, staging, target)
    for vid in (vol.volume_id, restored.volume_id, vol.volume_id):
        driver.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    driver.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    assert not driver.controller.ListVolumes(pb.ListVolumesRequest()).entries
    assert not os.listdir(os.path.join(driver.state_dir, "volumes"))


def test_raw_block_lifecycle(driver):
    cap = block_cap()
    vol = create(driver, "blk", cap, 32 * MiB)          # block without kind -> loop
    assert vol.volume_context["kind"] == "loop"
    staging, target = paths(driver, "blk")
    driver.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=staging, volume_capability=cap))
    driver.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=staging, target_path=target,
        volume_capability=cap))
    assert stat.S_ISBLK(os.stat(target).st_mode)
    assert mounts.block_size(target) == 32 * MiB
    data = os.urandom(4096)
    fd = os.open(target, os.O_RDWR)
    try:
        os.pwrite(fd, data, 8192)
        os.fsync(fd)
        assert os.pread(fd, 4096, 8192) == data
    finally:
        os.close(fd)
    stats = driver.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
        volume_id=vol.volume_id, volume_path=target))
    assert [(u.unit, u.total) for u in stats.usage] == [(pb.VolumeUsage.BYTES, 32 * MiB)]

    grown = driver.controller.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=48 * MiB),
        volume_capability=cap))
    assert grown.capacity_bytes == 48 * MiB and not grown.node_expansion_required
    assert mounts.block_size(target) == 48 * MiB

    unpublish_unstage(driver, vol.volume_id, staging, target)
    assert not lingering_loops(driver.root)
    with open(os.path.join(driver.state_dir, "volumes", vol.volume_id + ".img"), "rb") as f:
        f.seek(8192)
        assert f.read(4096) == data
    driver.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))


def test_clone_of_published_volume(driver):
    cap = mount_cap("ext4")
    source = create(driver, "source", cap, 32 * MiB, kind="loop")
    staging, target = stage_publish(driver, source.volume_id, cap, "source")
    data = os.urandom(MiB)
    write_read(os.path.join(target, "f"), data)   # still in the page cache: the freeze flushes it
    req = pb.CreateVolumeRequest(name="clone", volume_capabilities=[cap], parameters={"kind": "loop"},
                                 capacity_range=pb.CapacityRange(required_bytes=48 * MiB))
    req.volume_content_source.volume.volume_id = source.volume_id
    clone = driver.controller.CreateVolume(req).volume
    assert clone.capacity_bytes == 48 * MiB
    assert clone.content_source.volume.volume_id == source.volume_id
    c_staging, c_target = stage_publish(driver, clone.volume_id, cap, "clone")
    with open(os.path.join(c_target, "f"), "rb") as f:
        assert f.read() == data
    assert fs_bytes(c_target) > fs_bytes(target) + 8 * MiB  # grown to the larger size at staging
    for vid, s, t in ((clone.volume_id, c_staging, c_target), (source.volume_id, staging, target)):
        unpublish_unstage(driver, vid, s, t)
        driver.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
