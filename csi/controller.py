"""CSI Controller service: volumes and snapshots as records plus files in the state dir."""

import contextlib
import json
import os

from google.protobuf import timestamp_pb2, wrappers_pb2

from csi import attach, checks, layout, mounts
from csi.backends import BACKENDS, gluster
from csi.driver import TOPOLOGY_KEY, get_snapshot, get_volume, volume_condition
from csi.errors import (AlreadyExists, Aborted, FailedPrecondition, InvalidArgument, OutOfRange,
                        ResourceExhausted, Unimplemented, rpc)
from csi.state import Snapshot, Volume
from csi.v1 import csi_pb2, csi_pb2_grpc

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_LOOP_SIZE = GiB

RPC = csi_pb2.ControllerServiceCapability.RPC
CAPABILITIES = [
    csi_pb2.ControllerServiceCapability(rpc=RPC(type=t)) for t in (
        RPC.CREATE_DELETE_VOLUME, RPC.LIST_VOLUMES, RPC.GET_CAPACITY,
        RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.CLONE_VOLUME, RPC.EXPAND_VOLUME,
        RPC.LIST_VOLUMES_PUBLISHED_NODES, RPC.VOLUME_CONDITION, RPC.GET_VOLUME,
        RPC.SINGLE_NODE_MULTI_WRITER, RPC.GET_SNAPSHOT)
]


ATTACH_CAPABILITIES = [
    csi_pb2.ControllerServiceCapability(rpc=RPC(type=t)) for t in (
        RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.PUBLISH_READONLY)
]


def round_up(n):
    return -(-n // MiB) * MiB


def volume_kind(parameters, caps):
    kind_parameters = gluster.PARAMETERS if parameters.get("kind") == "gluster" else set()
    checks.parameters(parameters, {"kind"} | kind_parameters)
    if "kind" in parameters:
        kind = parameters["kind"]
    else:
        kind = "loop" if any(c.HasField("block") for c in caps) else "bind"
    if kind not in BACKENDS:
        raise InvalidArgument(f"unknown kind {kind!r}; use one of {sorted(BACKENDS)}")
    return kind


def requested_fs_type(kind, caps):
    """The file system a new loop volume gets: "" when only block access is asked."""
    if kind != "loop":
        return ""
    wanted = {c.mount.fs_type or "ext4" for c in caps if c.HasField("mount")}
    if len(wanted) > 1:
        raise InvalidArgument(f"conflicting fs_type values: {sorted(wanted)}")
    return wanted.pop() if wanted else ""


def timestamp(seconds):
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def snapshot_message(snap):
    return csi_pb2.Snapshot(size_bytes=snap.size, snapshot_id=snap.id,
                            source_volume_id=snap.source_volume_id,
                            creation_time=timestamp(snap.created), ready_to_use=True,
                            group_snapshot_id=snap.group_snapshot_id)


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(self, driver):
        self.driver = driver

    # ------------------------------------------------------------ helpers
    def _volume_message(self, vol):
        source = None
        if vol.source_type == "snapshot":
            source = csi_pb2.VolumeContentSource(
                snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=vol.source_id))
        elif vol.source_type == "volume":
            source = csi_pb2.VolumeContentSource(
                volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=vol.source_id))
        shared = vol.kind in checks.SHARED_KINDS        # reachable from every node
        return csi_pb2.Volume(
            capacity_bytes=vol.size, volume_id=vol.id, volume_context=self._context(vol),
            content_source=source,
            accessible_topology=[] if shared else [
                csi_pb2.Topology(segments=self.driver.topology)])

    @staticmethod
    def _context(vol):
        return json.loads(vol.context)

    def _status(self, tx, vol, status_type):
        """A ListVolumes or ControllerGetVolume VolumeStatus: publications and condition."""
        stage, pubs = tx.stage(vol.id), tx.publications(vol.id)
        return status_type(published_node_ids=attach.published_nodes(
                               tx, vol, self.driver.config.node_id),
                           volume_condition=volume_condition(self.driver.problem(vol, stage, pubs)))

    def _reachable(self, topology):
        return topology.segments.get(TOPOLOGY_KEY) == self.driver.config.node_id

    def _source(self, tx, content):
        """(type, id, record) of a CreateVolume content source."""
        which = content.WhichOneof("type")
        if which == "snapshot":
            sid = content.snapshot.snapshot_id
            return "snapshot", sid, get_snapshot(tx, sid, "source snapshot")
        if which == "volume":
            vid = content.volume.volume_id
            return "volume", vid, get_volume(tx, vid, "source volume")
        return "", "", None

    @staticmethod
    def _size(kind, fs_type, required, limit, source_size):
        if required:
            size = round_up(required)
        elif kind in ("loop", "gluster"):
            size = min(DEFAULT_LOOP_SIZE, limit // MiB * MiB) if limit else DEFAULT_LOOP_SIZE
        else:
            size = limit
        size = max(size, source_size)
        if fs_type == "xfs":
            size = max(size, mounts.XFS_MIN_SIZE)
        if (limit and size > limit) or (kind in ("loop", "gluster") and size <= 0):
            raise OutOfRange(f"cannot make a {kind} volume of {size} bytes within limit {limit}")
        return size

    # ------------------------------------------------------------ volumes
    @rpc("name", "volume_capabilities")
    def CreateVolume(self, request, context):
        name = checks.name(request.name)
        kind = volume_kind(request.parameters, request.volume_capabilities)
        for cap in request.volume_capabilities:
            checks.capability(cap, kind)
        fs_type = requested_fs_type(kind, request.volume_capabilities)
        required, limit = checks.capacity(request.capacity_range)
        context = (gluster.context_of(request.parameters) if kind == "gluster"
                   else {"kind": kind, "fsType": fs_type} if kind == "loop" else {"kind": kind})
        requisite = request.accessibility_requirements.requisite
        if requisite and kind not in checks.SHARED_KINDS and \
                not any(self._reachable(t) for t in requisite):
            raise ResourceExhausted("volumes are only reachable from node "
                                    f"{self.driver.config.node_id}, not in the requisite topology")
        with self.driver.busy.hold("create-volume:" + name):
            with self.driver.store.transaction() as tx:
                existing = tx.volume_by_name(name)
                source_type, source_id, source = self._source(tx, request.volume_content_source)
            if source is not None:
                if source.kind != kind:
                    raise InvalidArgument(f"cannot make a {kind} volume from a {source.kind} {source_type}")
                asked = {c.mount.fs_type for c in request.volume_capabilities
                         if c.HasField("mount") and c.mount.fs_type}
                if source.fs_type and asked - {source.fs_type}:
                    raise InvalidArgument(f"source has {source.fs_type}, not {', '.join(asked)}")
                fs_type = source.fs_type      # the copy has the source's file system, or none
            if existing is not None:
                created_fs = self._context(existing).get("fsType", "")
                compatible = (existing.kind == kind and created_fs == fs_type
                              and (kind != "gluster" or self._context(existing) == context)
                              and (existing.source_type, existing.source_id) == (source_type, source_id)
                              and existing.size >= required and not (limit and existing.size > limit))
                if not compatible:
                    raise AlreadyExists(f"volume {name!r} exists with other properties")
                return csi_pb2.CreateVolumeResponse(volume=self._volume_message(existing))
            size = self._size(kind, fs_type, required, limit, source.size if source else 0)
            if kind == "loop":
                context["fsType"] = fs_type      # the source's, for a copy
            vol = Volume(layout.new_volume_id(), name, kind, fs_type, size, source_type, source_id,
                         context=json.dumps(context, sort_keys=True))
            with self.driver.busy.hold(source_id):
                self._provision(vol, source)
        return csi_pb2.CreateVolumeResponse(volume=self._volume_message(vol))

    def _make(self, record, final, build, add):
        """Make the files of a new volume or snapshot record: check capacity,
        build(scratch) in tmp/, rename it to final, then add(tx) the record
        (returning what add returns) once capacity is checked again. On any
        failure whatever was made is removed."""
        with self.driver.store.transaction() as tx:
            self.driver.check_room(tx, record.size)
        backend = BACKENDS[record.kind]
        scratch = self.driver.layout.scratch(record.id)
        try:
            build(scratch)
            os.rename(scratch, final)
            with self.driver.store.transaction() as tx:
                self.driver.check_room(tx, record.size)
                return add(tx)
        except BaseException:
            for path in (scratch, final):
                if os.path.lexists(path):
                    backend.delete(path)
            raise

    def _provision(self, vol, source):
        """Build the volume in tmp/, move it in place, then record it."""
        if vol.kind == "gluster":
            self._provision_elsewhere(vol, source)
            return
        def build(scratch):
            if source is None:
                BACKENDS[vol.kind].create(scratch, vol.size, vol.fs_type)
            else:
                source_path = (self.driver.layout.snapshot(source.id, source.kind)
                               if isinstance(source, Snapshot) else self.driver.volume_path(source))
                self._copy_quiesced(source, source_path, scratch, vol.size)

        self._make(vol, self.driver.volume_path(vol), build, lambda tx: tx.add_volume(vol))

    def _provision_elsewhere(self, vol, source):
        """A volume outside the state dir (no local capacity, no tmp/): the
        backend makes it in place and removes it again if recording fails."""
        backend, path = BACKENDS[vol.kind], self.driver.volume_path(vol)
        if source is None:
            backend.create(path, vol.size, vol.fs_type)
        else:
            backend.copy(self.driver.volume_path(source), path, vol.size)
        try:
            with self.driver.store.transaction() as tx:
                tx.add_volume(vol)
        except BaseException:
            backend.delete(path)
            raise

    def _copy_quiesced(self, source, source_path, target, size):
        """Copy a snapshot or volume; a mounted loop file system is frozen meanwhile."""
        staging = ""
        if isinstance(source, Volume) and source.kind == "loop":
            with self.driver.store.transaction() as tx:
                stage = tx.stage(source.id)
            if stage and stage.access == "mount":
                staging = stage.path
        with mounts.frozen(staging) if staging else contextlib.nullcontext():
            BACKENDS[source.kind].copy(source_path, target, size)

    @rpc("volume_id")
    def DeleteVolume(self, request, context):
        vid = request.volume_id
        if not layout.is_volume_id(vid):
            return csi_pb2.DeleteVolumeResponse()
        with self.driver.busy.hold(vid):
            with self.driver.store.transaction() as tx:
                vol = tx.volume(vid)
                if vol is None:
                    return csi_pb2.DeleteVolumeResponse()
                if tx.stage(vid) or tx.publications(vid):
                    raise FailedPrecondition(f"volume {vid} is still staged or published")
                attach.check_detached(tx, vol)
            # Files first: if removing them fails, the record stays and a retry works.
            BACKENDS[vol.kind].delete(self.driver.volume_path(vol))
            with self.driver.store.transaction() as tx:
                tx.delete_volume(vid)
        return csi_pb2.DeleteVolumeResponse()

    @rpc("volume_id", "volume_capabilities")
    def ValidateVolumeCapabilities(self, request, context):
        with self.driver.store.transaction() as tx:
            vol = get_volume(tx, request.volume_id)
        try:
            for cap in request.volume_capabilities:
                checks.capability(cap, vol.kind)
                fs = cap.mount.fs_type if cap.HasField("mount") else ""
                if vol.kind == "loop" and fs and vol.fs_type and fs != vol.fs_type:
                    raise InvalidArgument(f"volume has {vol.fs_type}, not {fs}")
            if request.parameters and volume_kind(request.parameters,
                                                  request.volume_capabilities) != vol.kind:
                raise InvalidArgument(f"volume is of kind {vol.kind}")
            if request.mutable_parameters:
                raise InvalidArgument("mutable parameters are not supported")
        except InvalidArgument as e:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=str(e))
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters)
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    @rpc()
    def ListVolumes(self, request, context):
        if request.max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        token = request.starting_token
        if token and not layout.is_volume_id(token):
            raise Aborted(f"invalid starting_token {token!r}")
        limit = request.max_entries
        Status = csi_pb2.ListVolumesResponse.VolumeStatus
        with self.driver.store.transaction() as tx:
            page = tx.volumes(after=token, limit=limit + 1 if limit else 0)
            more = bool(limit) and len(page) > limit
            page = page[:limit] if limit else page
            entries = [csi_pb2.ListVolumesResponse.Entry(
                volume=self._volume_message(v),
                status=self._status(tx, v, Status))
                for v in page]
        return csi_pb2.ListVolumesResponse(entries=entries,
                                           next_token=page[-1].id if more else "")

    @rpc("volume_id")
    def ControllerGetVolume(self, request, context):
        Status = csi_pb2.ControllerGetVolumeResponse.VolumeStatus
        with self.driver.store.transaction() as tx:
            vol = get_volume(tx, request.volume_id)
            status = self._status(tx, vol, Status)
        return csi_pb2.ControllerGetVolumeResponse(volume=self._volume_message(vol), status=status)

    @rpc()
    def GetCapacity(self, request, context):
        empty = csi_pb2.GetCapacityResponse(available_capacity=0)
        if request.HasField("accessible_topology") and not self._reachable(request.accessible_topology):
            return empty
        try:
            kind = volume_kind(request.parameters, request.volume_capabilities)
            for cap in request.volume_capabilities:
                checks.capability(cap, kind)
            if kind == "gluster":
                volume_context = gluster.context_of(request.parameters)
        except InvalidArgument:
            return empty
        if kind == "gluster":     # the Gluster volume's free space, not the state dir's
            available = BACKENDS[kind].free_bytes(self.driver.layout.root, volume_context)
        else:
            with self.driver.store.transaction() as tx:
                available = self.driver.available_bytes(tx)
        return csi_pb2.GetCapacityResponse(
            available_capacity=available,
            maximum_volume_size=wrappers_pb2.Int64Value(value=available))

    @rpc()
    def ControllerGetCapabilities(self, request, context):
        extra = ATTACH_CAPABILITIES if self.driver.config.enable_attach else []
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=CAPABILITIES + extra)

    def _attach_enabled(self):
        if not self.driver.config.enable_attach:
            raise Unimplemented("controller publish is off; start the driver with --enable-attach")

    @rpc("volume_id", "node_id", "volume_capability")
    def ControllerPublishVolume(self, request, context):
        self._attach_enabled()
        return attach.publish(self.driver, request)

    @rpc("volume_id")
    def ControllerUnpublishVolume(self, request, context):
        self._attach_enabled()
        return attach.unpublish(self.driver, request)

    @rpc("volume_id", "capacity_range")
    def ControllerExpandVolume(self, request, context):
        required, limit = checks.capacity(request.capacity_range)
        with self.driver.store.transaction() as tx:
            vol = get_volume(tx, request.volume_id)
        block = request.HasField("volume_capability") and request.volume_capability.HasField("block")
        needs_node = vol.kind == "loop" and not block and bool(
            vol.fs_type or request.volume_capability.HasField("mount"))
        with self.driver.busy.hold(vol.id):
            new_size = round_up(required)
            if new_size > vol.size:
                if limit and new_size > limit:
                    raise OutOfRange(f"{new_size} bytes exceed limit {limit}")
                if vol.kind not in checks.SHARED_KINDS:
                    with self.driver.store.transaction() as tx:
                        self.driver.check_room(tx, new_size - vol.size)
                BACKENDS[vol.kind].grow(self.driver.volume_path(vol), new_size)
                with self.driver.store.transaction() as tx:
                    tx.set_volume_size(vol.id, new_size)
            else:
                new_size = vol.size
        return csi_pb2.ControllerExpandVolumeResponse(capacity_bytes=new_size,
                                                      node_expansion_required=needs_node)

    # ---------------------------------------------------------- snapshots
    @rpc("source_volume_id", "name")
    def CreateSnapshot(self, request, context):
        name = checks.name(request.name)
        checks.parameters(request.parameters)
        source_id = request.source_volume_id
        with self.driver.busy.hold("create-snapshot:" + name):
            with self.driver.store.transaction() as tx:
                existing = tx.snapshot_by_name(name)
                vol = get_volume(tx, source_id, "source volume") if existing is None else None
            if existing is not None:
                if existing.source_volume_id != source_id:
                    raise AlreadyExists(f"snapshot {name!r} exists for another volume")
                return csi_pb2.CreateSnapshotResponse(snapshot=snapshot_message(existing))
            if vol.kind == "gluster":
                raise FailedPrecondition(f"volume {vol.id} is a gluster volume: snapshots of "
                                         "gluster volumes are not supported (clone it instead)")
            snap = Snapshot(layout.new_snapshot_id(), name, vol.id, vol.kind, vol.fs_type, vol.size)
            with self.driver.busy.hold(vol.id):
                snap = self._take_snapshot(snap, vol)
        return csi_pb2.CreateSnapshotResponse(snapshot=snapshot_message(snap))

    def _take_snapshot(self, snap, vol):
        """Copy the volume in tmp/, move it in place, then record it; returns the record."""
        def add(tx):
            tx.add_snapshot(snap)
            return tx.snapshot(snap.id)

        return self._make(snap, self.driver.layout.snapshot(snap.id, snap.kind),
                          lambda scratch: self._copy_quiesced(vol, self.driver.volume_path(vol),
                                                              scratch, snap.size),
                          add)

    @rpc("snapshot_id")
    def DeleteSnapshot(self, request, context):
        sid = request.snapshot_id
        if not layout.is_snapshot_id(sid):
            return csi_pb2.DeleteSnapshotResponse()
        with self.driver.busy.hold(sid):
            with self.driver.store.transaction() as tx:
                snap = tx.snapshot(sid)
            if snap is None:
                return csi_pb2.DeleteSnapshotResponse()
            if snap.group_snapshot_id:
                raise FailedPrecondition(f"snapshot {sid} belongs to group snapshot "
                                         f"{snap.group_snapshot_id}; delete the group")
            BACKENDS[snap.kind].delete(self.driver.layout.snapshot(sid, snap.kind))
            with self.driver.store.transaction() as tx:
                tx.delete_snapshot(sid)
        return csi_pb2.DeleteSnapshotResponse()

    @rpc()
    def ListSnapshots(self, request, context):
        if request.max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        token = request.starting_token
        if token and not layout.is_snapshot_id(token):
            raise Aborted(f"invalid starting_token {token!r}")
        limit = request.max_entries
        with self.driver.store.transaction() as tx:
            if request.snapshot_id:
                snap = tx.snapshot(request.snapshot_id) \
                    if layout.is_snapshot_id(request.snapshot_id) else None
                page = [snap] if snap and snap.id > token and (
                    not request.source_volume_id
                    or snap.source_volume_id == request.source_volume_id) else []
            else:
                page = tx.snapshots(after=token, limit=limit + 1 if limit else 0,
                                    source_volume_id=request.source_volume_id or None)
        more = bool(limit) and len(page) > limit
        page = page[:limit] if limit else page
        entries = [csi_pb2.ListSnapshotsResponse.Entry(snapshot=snapshot_message(s))
                   for s in page]
        return csi_pb2.ListSnapshotsResponse(entries=entries,
                                             next_token=page[-1].id if more else "")

    @rpc("snapshot_id")
    def GetSnapshot(self, request, context):
        with self.driver.store.transaction() as tx:
            snap = get_snapshot(tx, request.snapshot_id)
        return csi_pb2.GetSnapshotResponse(snapshot=snapshot_message(snap))
