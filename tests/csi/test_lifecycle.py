"""Whole volume lifecycles with real data, per kind of volume: what a pod
writes survives unpublish/unstage, a snapshot and a restore; online expansion
grows what the pod sees; clones, read-only publishing, pagination, capacity
accounting and the volume condition."""

import errno
import fcntl
import os
import random
import struct
import subprocess

import pytest

from .conftest import EXT4_ONLINE_GROW, KINDS, Code, MiB, Mode, code_of, is_mountpoint, kind_cap, pb

BLKGETSIZE64 = 0x80081272


# -------------------------------------------------------------- data helpers
def payload(size=256 * 1024, seed=1):
    """Reproducible bytes, different per seed."""
    return random.Random(seed).randbytes(size)


def write_data(kind, target, data):
    """Write as a pod would: a file in a mounted volume, raw bytes at offset 0 of a block volume."""
    if KINDS[kind]["block"]:
        fd = os.open(target, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        with open(os.path.join(target, "data.bin"), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def read_data(kind, target, size):
    if KINDS[kind]["block"]:
        fd = os.open(target, os.O_RDONLY)
        try:
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    with open(os.path.join(target, "data.bin"), "rb") as f:
        return f.read()


def fs_size(path):
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def device_size(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
    finally:
        os.close(fd)


def snapshot_source(snapshot_id):
    return pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(
        snapshot_id=snapshot_id))


def volume_source(volume_id):
    return pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id=volume_id))


# ---------------------------------------------------------------- lifecycle
@pytest.mark.parametrize("kind", ["bind", "ext4", "xfs", "block"])
def test_full_lifecycle(csi, driver, kind):
    spec = KINDS[kind]
    cap = kind_cap(kind)
    data = payload(seed=3)

    # create -> stage -> publish -> write -> unpublish -> unstage
    vol = csi.create(kind)
    assert vol.capacity_bytes == spec["size"]
    staging = csi.stage(vol.volume_id, cap)
    target = csi.publish(vol.volume_id, staging, cap)
    assert is_mountpoint(target)
    write_data(kind, target, data)
    csi.unpublish(vol.volume_id, target)
    assert not os.path.lexists(target)
    csi.unstage(vol.volume_id, staging)
    assert not is_mountpoint(staging)

    # snapshot -> restore into a new volume -> stage/publish -> same bytes
    snap = csi.snapshot(vol.volume_id)
    assert snap.ready_to_use and snap.source_volume_id == vol.volume_id
    restored = csi.create(kind, source=snapshot_source(snap.snapshot_id))
    assert restored.volume_id != vol.volume_id
    assert restored.capacity_bytes >= vol.capacity_bytes
    assert restored.content_source.snapshot.snapshot_id == snap.snapshot_id
    staging2 = csi.stage(restored.volume_id, cap)
    target2 = csi.publish(restored.volume_id, staging2, cap)
    assert read_data(kind, target2, len(data)) == data

    # expand online while published
    before = _seen_size(kind, target2)
    new_size = restored.capacity_bytes + 32 * MiB
    grown = csi.expand(restored.volume_id, new_size, cap)
    assert grown.capacity_bytes >= new_size
    assert grown.node_expansion_required == (kind in ("ext4", "xfs"))
    if kind == "ext4" and not EXT4_ONLINE_GROW:
        # no CAP_SYS_RESOURCE here: a mounted ext4 cannot grow; the driver
        # says so and grows it through the staged path once unpublished
        assert code_of(csi.node.NodeExpandVolume, pb.NodeExpandVolumeRequest(
            volume_id=restored.volume_id, volume_path=str(target2),
            staging_target_path=str(staging2), volume_capability=cap,
            capacity_range=pb.CapacityRange(required_bytes=new_size))) == Code.FAILED_PRECONDITION
        csi.unpublish(restored.volume_id, target2)
        csi.node_expand(restored.volume_id, staging2, new_size, staging2, cap)
        target2 = csi.publish(restored.volume_id, staging2, cap)
    elif grown.node_expansion_required:
        csi.node_expand(restored.volume_id, target2, new_size, staging2, cap)
    after = _seen_size(kind, target2)
    if kind == "bind":
        # accounted, not enforced: only the recorded size changes
        assert csi.get_volume(restored.volume_id).volume.capacity_bytes == grown.capacity_bytes
    elif kind == "block":
        assert after == new_size
    else:
        assert after >= before + 24 * MiB, f"file system did not grow: {before} -> {after}"
    assert read_data(kind, target2, len(data)) == data

    # stats on the published volume
    stats = csi.stats(restored.volume_id, target2, staging2)
    usage = {u.unit: u for u in stats.usage}
    assert usage[pb.VolumeUsage.BYTES].total > 0
    if kind == "block":
        assert usage[pb.VolumeUsage.BYTES].total == new_size
    else:
        assert usage[pb.VolumeUsage.BYTES].used >= len(data)
        assert usage[pb.VolumeUsage.BYTES].available > 0
        assert usage[pb.VolumeUsage.INODES].total > 0
    assert not stats.volume_condition.abnormal

    # tear down through the driver; the fixture then checks the host is clean
    csi.release(restored.volume_id, staging2, target2)
    csi.delete(restored.volume_id)
    csi.delete_snapshot(snap.snapshot_id)
    csi.delete(vol.volume_id)
    assert not (driver.state_dir / "volumes" / f"{vol.volume_id}.img").exists()
    assert not (driver.state_dir / "volumes" / vol.volume_id).exists()


def _seen_size(kind, target):
    if kind == "block":
        return device_size(target)
    return fs_size(target)


# -------------------------------------------------------------------- clones
@pytest.mark.parametrize("kind", ["bind", "ext4", "block"])
def test_clone_has_source_data(csi, kind):
    cap = kind_cap(kind)
    data = payload(seed=5)
    src, staging, target = csi.ready(kind)
    write_data(kind, target, data)
    csi.release(src.volume_id, staging, target)

    clone = csi.create(kind, size=KINDS[kind]["size"] + 16 * MiB, source=volume_source(src.volume_id))
    assert clone.content_source.volume.volume_id == src.volume_id
    assert clone.capacity_bytes == KINDS[kind]["size"] + 16 * MiB
    staging2 = csi.stage(clone.volume_id, cap)
    target2 = csi.publish(clone.volume_id, staging2, cap)
    assert read_data(kind, target2, len(data)) == data

    # the clone is independent of its source
    write_data(kind, target2, payload(seed=6))
    staging = csi.stage(src.volume_id, cap)
    target = csi.publish(src.volume_id, staging, cap)
    assert read_data(kind, target, len(data)) == data


def test_restore_smaller_than_snapshot_takes_snapshot_size(csi):
    src = csi.create("ext4", size=48 * MiB)
    snap = csi.snapshot(src.volume_id)
    restored = csi.create("ext4", size=16 * MiB, source=snapshot_source(snap.snapshot_id))
    assert restored.capacity_bytes == 48 * MiB


def test_snapshot_survives_source_deletion(csi):
    data = payload(seed=9)
    src, staging, target = csi.ready("ext4")
    write_data("ext4", target, data)
    csi.release(src.volume_id, staging, target)
    snap = csi.snapshot(src.volume_id)
    csi.delete(src.volume_id)
    restored, staging, target = csi.ready("ext4", source=snapshot_source(snap.snapshot_id))
    assert read_data("ext4", target, len(data)) == data


# ----------------------------------------------------------------- read-only
@pytest.mark.parametrize("kind", ["bind", "ext4", "xfs", "block"])
def test_readonly_publish(csi, kind):
    cap = kind_cap(kind)
    data = payload(seed=11)
    vol, staging, target = csi.ready(kind)
    write_data(kind, target, data)
    ro_target = csi.publish(vol.volume_id, staging, cap, target=csi.path("ro"), readonly=True)
    assert read_data(kind, ro_target, len(data)) == data
    with pytest.raises(OSError) as err:
        write_data(kind, ro_target, b"must not land")
    # a file system mounted read-only says EROFS; the kernel refuses writes
    # to a read-only block device with EPERM (a read-only bind mount of a
    # device node does not stop writes at all)
    allowed = (errno.EROFS, errno.EPERM) if KINDS[kind]["block"] else (errno.EROFS,)
    assert err.value.errno in allowed
    assert read_data(kind, target, len(data)) == data
    # the writable publication is unaffected
    write_data(kind, target, data[::-1])


def test_reader_only_mode_publishes_read_only(csi):
    vol = csi.create("ext4")
    cap = kind_cap("ext4", Mode.SINGLE_NODE_READER_ONLY)
    staging = csi.stage(vol.volume_id, cap)
    target = csi.publish(vol.volume_id, staging, cap)
    with pytest.raises(OSError) as err:
        (target / "x").write_text("no")
    assert err.value.errno == errno.EROFS


# ---------------------------------------------------------------- pagination
def test_list_volumes_pagination(csi):
    made = {csi.create("bind").volume_id for _ in range(7)}
    everything = csi.list_all_volumes()
    ids = [e.volume.volume_id for e in everything]
    assert made <= set(ids) and len(ids) == len(set(ids))
    for page in (1, 2, 3, 7, 100):
        paged = [e.volume.volume_id for e in csi.list_all_volumes(page=page)]
        assert paged == ids, f"paging by {page} differs from one full listing"
    assert ids == sorted(ids), "entries are ordered by ID"
    resp = csi.controller.ListVolumes(pb.ListVolumesRequest(max_entries=len(ids)))
    assert len(resp.entries) == len(ids) and resp.next_token == ""


def test_list_volumes_entries_describe_volumes(csi, driver):
    vol, staging, target = csi.ready("ext4")
    entry = {e.volume.volume_id: e for e in csi.list_all_volumes()}[vol.volume_id]
    assert entry.volume == vol
    assert list(entry.status.published_node_ids) == [driver.node_id]
    assert not entry.status.volume_condition.abnormal


def test_list_snapshots_pagination(csi):
    vol = csi.create("bind")
    made = {csi.snapshot(vol.volume_id).snapshot_id for _ in range(5)}
    ids = [e.snapshot.snapshot_id for e in csi.list_all_snapshots()]
    assert made <= set(ids) and len(ids) == len(set(ids))
    for page in (1, 2, 4):
        assert [e.snapshot.snapshot_id for e in csi.list_all_snapshots(page=page)] == ids
    by_source = csi.list_all_snapshots(page=2, source_volume_id=vol.volume_id)
    assert {e.snapshot.snapshot_id for e in by_source} == made


def test_stale_token_after_deletion_still_pages(csi):
    made = [csi.create("bind").volume_id for _ in range(4)]
    first = csi.controller.ListVolumes(pb.ListVolumesRequest(max_entries=2))
    assert first.next_token
    for volume_id in made:
        csi.delete(volume_id)
    # a token the driver produced stays valid (or is refused as ABORTED);
    # it never breaks the listing
    code = code_of(csi.controller.ListVolumes,
                   pb.ListVolumesRequest(max_entries=2, starting_token=first.next_token))
    assert code in (Code.OK, Code.ABORTED)


# ------------------------------------------------------------------ capacity
def test_capacity_accounting(csi):
    start = csi.capacity()
    vol = csi.create("ext4", size=48 * MiB)
    assert csi.capacity() == start - 48 * MiB
    snap = csi.snapshot(vol.volume_id)
    assert csi.capacity() == start - 48 * MiB - snap.size_bytes
    bind = csi.create("bind", size=10 * MiB)
    assert csi.capacity() == start - 58 * MiB - snap.size_bytes
    csi.expand(vol.volume_id, 64 * MiB)
    assert csi.capacity() == start - 74 * MiB - snap.size_bytes
    csi.delete(bind.volume_id)
    csi.delete_snapshot(snap.snapshot_id)
    csi.delete(vol.volume_id)
    assert csi.capacity() == start


def test_capacity_for_block_and_mount_capabilities(csi):
    total = csi.capacity()
    assert csi.capacity(volume_capabilities=[kind_cap("block")]) == total
    assert csi.capacity(volume_capabilities=[kind_cap("ext4")], parameters={"kind": "loop"}) == total


# ------------------------------------------------------------ volume condition
def test_controller_volume_condition(csi, driver):
    vol = csi.create("bind")
    assert not csi.get_volume(vol.volume_id).status.volume_condition.abnormal
    data_dir = driver.state_dir / "volumes" / vol.volume_id
    hidden = driver.state_dir / "volumes" / f"hidden-{vol.volume_id}"
    os.rename(data_dir, hidden)
    try:
        cond = csi.get_volume(vol.volume_id).status.volume_condition
        assert cond.abnormal and cond.message
    finally:
        os.rename(hidden, data_dir)
    assert not csi.get_volume(vol.volume_id).status.volume_condition.abnormal


def test_node_volume_condition_when_mount_vanishes(csi):
    vol, staging, target = csi.ready("ext4")
    assert not csi.stats(vol.volume_id, target, staging).volume_condition.abnormal
    subprocess.run(["umount", str(target)], check=True)
    cond = csi.stats(vol.volume_id, target, staging).volume_condition
    assert cond.abnormal and cond.message
    # a repeated publish repairs it
    csi.publish(vol.volume_id, staging, kind_cap("ext4"), target=target)
    assert is_mountpoint(target)


@pytest.mark.parametrize("kind", ["ext4", "xfs"])
def test_offline_expansion(csi, kind):
    """Expanded while not staged: after the next stage (and the NodeExpandVolume
    the CO sends then), the pod sees the larger file system and its data."""
    cap = kind_cap(kind)
    data = payload(seed=13)
    vol, staging, target = csi.ready(kind)
    write_data(kind, target, data)
    before = fs_size(target)
    csi.release(vol.volume_id, staging, target)
    new_size = vol.capacity_bytes + 64 * MiB
    grown = csi.expand(vol.volume_id, new_size, cap)
    assert grown.capacity_bytes == new_size and grown.node_expansion_required
    staging = csi.stage(vol.volume_id, cap, staging)
    csi.node_expand(vol.volume_id, staging, new_size, staging, cap)
    target = csi.publish(vol.volume_id, staging, cap)
    assert fs_size(target) >= before + 56 * MiB
    assert read_data(kind, target, len(data)) == data
