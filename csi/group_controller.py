"""CSI GroupController service: snapshots of several volumes taken together.

Every mounted loop member's file system is frozen, each member is copied, and
all are thawed (also when a copy fails), so the members agree with each other
as after a crash. Bind members are directories on the state dir's own file
system, which the driver cannot freeze under itself: they are copied, not
frozen. The group and its member snapshots are recorded in one transaction;
a member is deleted only with its group.
"""

import contextlib
import os

from csi import checks, layout, mounts
from csi.backends import BACKENDS
from csi.controller import snapshot_message, timestamp
from csi.driver import get_volume
from csi.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, rpc
from csi.state import GroupSnapshot, Snapshot
from csi.v1 import csi_pb2, csi_pb2_grpc

KINDS = frozenset({"bind", "loop"})
RPC = csi_pb2.GroupControllerServiceCapability.RPC
CAPABILITIES = [csi_pb2.GroupControllerServiceCapability(
    rpc=RPC(type=RPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT))]


def group_message(group, members):
    return csi_pb2.VolumeGroupSnapshot(
        group_snapshot_id=group.id, snapshots=[snapshot_message(m) for m in members],
        creation_time=timestamp(group.created), ready_to_use=True)


def _check_listed(snapshot_ids, members):
    """The CO's list of member snapshots, when given, must be the group's."""
    if snapshot_ids and sorted(snapshot_ids) != sorted(m.id for m in members):
        raise InvalidArgument("snapshot_ids do not match the group snapshot's members")


class GroupControllerService(csi_pb2_grpc.GroupControllerServicer):
    def __init__(self, driver):
        self.driver = driver

    @rpc()
    def GroupControllerGetCapabilities(self, request, context):
        return csi_pb2.GroupControllerGetCapabilitiesResponse(capabilities=CAPABILITIES)

    @rpc("name", "source_volume_ids")
    def CreateVolumeGroupSnapshot(self, request, context):
        name = checks.name(request.name)
        checks.parameters(request.parameters)
        ids = list(request.source_volume_ids)
        if len(set(ids)) != len(ids):
            raise InvalidArgument("source_volume_ids lists a volume twice")
        with self.driver.busy.hold("create-group-snapshot:" + name):
            with self.driver.store.transaction() as tx:
                existing = tx.group_snapshot_by_name(name)
                if existing:
                    members = tx.group_members(existing.id)
                else:
                    volumes = [get_volume(tx, vid, "source volume") for vid in ids]
            if existing:
                if sorted(m.source_volume_id for m in members) != sorted(ids):
                    raise AlreadyExists(f"group snapshot {name!r} exists for other volumes")
                return csi_pb2.CreateVolumeGroupSnapshotResponse(
                    group_snapshot=group_message(existing, members))
            refused = [v.id for v in volumes if v.kind not in KINDS]
            if refused:
                raise FailedPrecondition(f"group snapshots take bind and loop volumes only, "
                                         f"not {', '.join(refused)}")
            group = GroupSnapshot(layout.new_group_snapshot_id(), name)
            snaps = [Snapshot(layout.new_snapshot_id(), f"{group.id}/{v.id}", v.id, v.kind,
                              v.fs_type, v.size, group_snapshot_id=group.id) for v in volumes]
            with self.driver.busy.hold(*ids):
                group, members = self._take(group, volumes, snaps)
        return csi_pb2.CreateVolumeGroupSnapshotResponse(
            group_snapshot=group_message(group, members))

    def _take(self, group, volumes, snaps):
        """Copy every member into tmp/ while frozen, move the copies in place,
        record them; on any failure remove whatever was made."""
        lay = self.driver.layout
        with self.driver.store.transaction() as tx:
            self.driver.check_room(tx, sum(s.size for s in snaps))
        made = []
        try:
            with self._frozen(volumes):
                for vol, snap in zip(volumes, snaps):
                    made.append(lay.scratch(snap.id))
                    BACKENDS[vol.kind].copy(self.driver.volume_path(vol), made[-1], snap.size)
            for snap in snaps:
                made.append(lay.snapshot(snap.id, snap.kind))
                os.rename(lay.scratch(snap.id), made[-1])
            with self.driver.store.transaction() as tx:
                self.driver.check_room(tx, sum(s.size for s in snaps))
                tx.add_group_snapshot(group)
                for snap in snaps:
                    tx.add_snapshot(snap)
                return tx.group_snapshot(group.id), tx.group_members(group.id)
        except BaseException:
            for path, snap in zip(made, snaps + snaps):
                if os.path.lexists(path):
                    BACKENDS[snap.kind].delete(path)
            raise

    @contextlib.contextmanager
    def _frozen(self, volumes):
        """Freeze the mounted file system of every loop member; thaw them all on exit."""
        with self.driver.store.transaction() as tx:
            stages = [tx.stage(v.id) for v in volumes]
        points = [s.path for v, s in zip(volumes, stages)
                  if v.kind == "loop" and s and s.access == "mount" and mounts.is_mountpoint(s.path)]
        with contextlib.ExitStack() as stack:
            for point in points:
                stack.enter_context(mounts.frozen(point))
            yield

    def _group(self, tx, group_id):
        group = tx.group_snapshot(group_id) if layout.is_group_snapshot_id(group_id) else None
        return group, (tx.group_members(group.id) if group else [])

    @rpc("group_snapshot_id")
    def GetVolumeGroupSnapshot(self, request, context):
        with self.driver.store.transaction() as tx:
            group, members = self._group(tx, request.group_snapshot_id)
        if group is None:
            raise NotFound(f"group snapshot {request.group_snapshot_id!r} does not exist")
        _check_listed(request.snapshot_ids, members)
        return csi_pb2.GetVolumeGroupSnapshotResponse(group_snapshot=group_message(group, members))

    @rpc("group_snapshot_id")
    def DeleteVolumeGroupSnapshot(self, request, context):
        gid = request.group_snapshot_id
        with self.driver.busy.hold(gid):
            with self.driver.store.transaction() as tx:
                group, members = self._group(tx, gid)
            if group is None:
                return csi_pb2.DeleteVolumeGroupSnapshotResponse()
            _check_listed(request.snapshot_ids, members)
            # Files first: if removing one fails, the records stay and a retry works.
            for snap in members:
                BACKENDS[snap.kind].delete(self.driver.layout.snapshot(snap.id, snap.kind))
            with self.driver.store.transaction() as tx:
                tx.delete_group_snapshot(gid)
        return csi_pb2.DeleteVolumeGroupSnapshotResponse()
