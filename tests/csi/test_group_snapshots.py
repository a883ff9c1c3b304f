"""GroupController: volume group snapshots of bind and loop volumes."""

import os
import subprocess
import threading

import grpc

from .conftest import Code, code_of, kind_cap, pb
from .test_lifecycle import payload, read_data, write_data

GROUP_KINDS = ["bind", "ext4", "block"]


def snapshot_source(snapshot_id):
    return pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(
        snapshot_id=snapshot_id))


def writes_within(path, seconds=10):
    """A write (with fsync) into the mounted file system at path finishes in time;
    if it hangs on a frozen file system, thaw it so that nothing stays stuck."""
    done = threading.Event()

    def write():
        with open(os.path.join(path, "after-group"), "wb") as f:
            f.write(b"x" * 4096)
            os.fsync(f.fileno())
        done.set()

    worker = threading.Thread(target=write, daemon=True)
    worker.start()
    ok = done.wait(seconds)
    if not ok:
        subprocess.run(["fsfreeze", "--unfreeze", str(path)], capture_output=True)
        worker.join(30)
    return ok


def test_capabilities(csi):
    caps = csi.group.GroupControllerGetCapabilities(
        pb.GroupControllerGetCapabilitiesRequest()).capabilities
    Type = pb.GroupControllerServiceCapability.RPC.Type
    assert {c.rpc.type for c in caps} == {Type.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT}


def test_group_snapshot_restore_and_delete(csi):
    volumes = {}
    for seed, kind in enumerate(GROUP_KINDS):
        vol, staging, target = csi.ready(kind)
        data = payload(64 * 1024, seed=seed + 40)
        write_data(kind, target, data)
        volumes[vol.volume_id] = (kind, target, data)
    ids = list(volumes)
    name = csi.name("group")
    group = csi.group_snapshot(ids, name)
    assert group.group_snapshot_id.startswith("group-") and group.ready_to_use
    assert sorted(s.source_volume_id for s in group.snapshots) == sorted(ids)
    assert all(s.group_snapshot_id == group.group_snapshot_id and s.ready_to_use
               for s in group.snapshots)
    member_ids = [s.snapshot_id for s in group.snapshots]
    # idempotent by name (order of the IDs does not matter); other volumes: ALREADY_EXISTS
    again = csi.group_snapshot(list(reversed(ids)), name)
    assert again.group_snapshot_id == group.group_snapshot_id
    assert sorted(s.snapshot_id for s in again.snapshots) == sorted(member_ids)
    assert code_of(csi.group.CreateVolumeGroupSnapshot, pb.CreateVolumeGroupSnapshotRequest(
        name=name, source_volume_ids=ids[:2])) == Code.ALREADY_EXISTS
    # Get, and the members as ordinary snapshots
    got = csi.group.GetVolumeGroupSnapshot(pb.GetVolumeGroupSnapshotRequest(
        group_snapshot_id=group.group_snapshot_id, snapshot_ids=member_ids)).group_snapshot
    assert sorted(s.snapshot_id for s in got.snapshots) == sorted(member_ids)
    listed = {e.snapshot.snapshot_id: e.snapshot for e in csi.list_all_snapshots()}
    for sid in member_ids:
        assert listed[sid].group_snapshot_id == group.group_snapshot_id
    # a member cannot be deleted alone
    for sid in member_ids:
        assert code_of(csi.controller.DeleteSnapshot,
                       pb.DeleteSnapshotRequest(snapshot_id=sid)) == Code.FAILED_PRECONDITION
    # restore each member: the data of the moment of the group snapshot
    for snap in group.snapshots:
        kind, _, data = volumes[snap.source_volume_id]
        restored, _, target = csi.ready(kind, source=snapshot_source(snap.snapshot_id))
        assert read_data(kind, target, len(data)) == data, kind
    # a wrong member list is refused; then the group goes, members with it
    assert code_of(csi.group.DeleteVolumeGroupSnapshot, pb.DeleteVolumeGroupSnapshotRequest(
        group_snapshot_id=group.group_snapshot_id,
        snapshot_ids=member_ids[:1])) == Code.INVALID_ARGUMENT
    csi.group.DeleteVolumeGroupSnapshot(pb.DeleteVolumeGroupSnapshotRequest(
        group_snapshot_id=group.group_snapshot_id, snapshot_ids=member_ids))
    for sid in member_ids:
        assert code_of(csi.controller.GetSnapshot,
                       pb.GetSnapshotRequest(snapshot_id=sid)) == Code.NOT_FOUND
    assert code_of(csi.group.GetVolumeGroupSnapshot, pb.GetVolumeGroupSnapshotRequest(
        group_snapshot_id=group.group_snapshot_id)) == Code.NOT_FOUND
    csi.group.DeleteVolumeGroupSnapshot(pb.DeleteVolumeGroupSnapshotRequest(
        group_snapshot_id=group.group_snapshot_id))          # idempotent


def test_errors(csi):
    vol = csi.create("bind")
    create = csi.group.CreateVolumeGroupSnapshot
    assert code_of(create, pb.CreateVolumeGroupSnapshotRequest(
        source_volume_ids=[vol.volume_id])) == Code.INVALID_ARGUMENT
    assert code_of(create, pb.CreateVolumeGroupSnapshotRequest(
        name=csi.name())) == Code.INVALID_ARGUMENT
    assert code_of(create, pb.CreateVolumeGroupSnapshotRequest(
        name=csi.name(), source_volume_ids=[vol.volume_id, vol.volume_id])) == Code.INVALID_ARGUMENT
    assert code_of(create, pb.CreateVolumeGroupSnapshotRequest(
        name=csi.name(), source_volume_ids=[vol.volume_id, "vol-" + "0" * 32])) == Code.NOT_FOUND
    assert code_of(create, pb.CreateVolumeGroupSnapshotRequest(
        name=csi.name(), source_volume_ids=[vol.volume_id],
        parameters={"x": "y"})) == Code.INVALID_ARGUMENT
    for bad in ["", "group-" + "0" * 32, "../x"]:
        code = code_of(csi.group.GetVolumeGroupSnapshot,
                       pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=bad))
        assert code == (Code.INVALID_ARGUMENT if not bad else Code.NOT_FOUND), bad
    assert code_of(csi.group.DeleteVolumeGroupSnapshot,
                   pb.DeleteVolumeGroupSnapshotRequest()) == Code.INVALID_ARGUMENT
    assert not csi.list_all_snapshots()


def test_members_thawed_and_nothing_left_when_a_copy_fails(csi, driver):
    cap = kind_cap("ext4")
    first = csi.create("ext4")
    second = csi.create("ext4")
    stagings = [csi.stage(v.volume_id, cap) for v in (first, second)]
    # the second member's backing file vanishes behind the driver's back
    # (its loop device and mount live on): its copy fails after the first's
    os.unlink(driver.state_dir / "volumes" / f"{second.volume_id}.img")
    try:
        csi.group_snapshot([first.volume_id, second.volume_id])
    except grpc.RpcError as err:
        assert err.code() == Code.INTERNAL
    else:
        raise AssertionError("the group snapshot should have failed")
    for staging in stagings:
        assert writes_within(staging), f"{staging} was left frozen"
    assert os.listdir(driver.state_dir / "snapshots") == []
    assert os.listdir(driver.state_dir / "tmp") == []
    assert not csi.list_all_snapshots()


def test_group_of_mounted_loop_volumes_thawed_after(csi):
    vols = [csi.ready("ext4") for _ in range(2)]
    csi.group_snapshot([v.volume_id for v, _, _ in vols])
    for _, staging, target in vols:
        assert writes_within(target)

