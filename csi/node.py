"""CSI Node service: stage (attach, format, mount) and publish (bind mounts) on this node.

Every request is first recorded (intent), then the mounts are made with
idempotent "ensure" steps, so repeating a call, or the reconcile on start,
finishes whatever a crash interrupted.
"""

import json
import logging
import os

from csi import checks, ephemeral, mounts, targets
from csi.backends import BACKENDS, gluster
from csi.driver import get_volume, volume_condition
from csi.errors import (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OutOfRange,
                        rpc)
from csi.layout import is_volume_id
from csi.state import Publication, Stage
from csi.v1 import csi_pb2, csi_pb2_grpc

log = logging.getLogger(__name__)
Mode = csi_pb2.VolumeCapability.AccessMode
RPC = csi_pb2.NodeServiceCapability.RPC
CAPABILITIES = [
    csi_pb2.NodeServiceCapability(rpc=RPC(type=t)) for t in (
        RPC.STAGE_UNSTAGE_VOLUME, RPC.GET_VOLUME_STATS, RPC.EXPAND_VOLUME,
        RPC.VOLUME_CONDITION, RPC.SINGLE_NODE_MULTI_WRITER)
]
Usage = csi_pb2.VolumeUsage


# ----------------------------------------------- mechanics shared with reconcile

def ensure_staged(driver, vol, stage):
    """Make the staging of a recorded Stage true on the kernel side. A loop
    volume created for block access only gets a file system at its first
    mount-mode staging (the stage capability's fs_type, else ext4)."""
    cap = json.loads(stage.capability)
    if stage.access == "mount":
        os.makedirs(stage.path, exist_ok=True)
    blank = vol.kind == "loop" and stage.access == "mount" and not vol.fs_type
    fs_type = (cap.get("fs") or "ext4") if blank else vol.fs_type
    BACKENDS[vol.kind].stage(driver.volume_path(vol), stage.path, stage.access, fs_type,
                             cap.get("flags", []), format_blank=blank)
    if blank:
        with driver.store.transaction() as tx:
            tx.set_volume_fs_type(vol.id, fs_type)


def ensure_published(driver, vol, stage, pub):
    """Make a recorded Publication true: bind the staging path (or device) onto the target."""
    flags = mounts.vfs_flags(json.loads(pub.capability).get("flags", []))
    target = pub.target
    if stage.access == "block":
        _ensure_block_published(BACKENDS[vol.kind], driver.volume_path(vol), pub, flags)
        return
    if mounts.is_mountpoint(target):
        if not mounts.same_file_system_root(target, stage.path):
            raise mounts.TargetInUse(f"{target} has another mount")
        return
    targets.check_free(target, "mount")
    targets.make(target, "mount")
    mounts.bind_mount(stage.path, target, readonly=pub.readonly, options=flags)


def _ensure_block_published(backend, path, pub, flags):
    target = pub.target
    if mounts.is_mountpoint(target):
        if mounts.block_device_of(target) not in mounts.loops_backed_by(path):
            raise mounts.TargetInUse(f"{target} has another mount")
        return
    targets.check_free(target, "block")
    targets.make(target, "block")
    device = backend.readonly_device(path) if pub.readonly else backend.device(path)
    try:
        mounts.bind_mount(device, target, readonly=pub.readonly, options=flags)
    except BaseException:
        if pub.readonly:
            backend.release_readonly(path, device)
        raise


def remove_publication(driver, vol, pub):
    """Unmount a target, remove the directory or file made for it, and detach
    the read-only loop device of a read-only block publication."""
    target = pub.target
    device = ""
    if pub.readonly and mounts.is_mountpoint(target):
        device = mounts.block_device_of(target)
    mounts.umount(target)
    targets.remove(target)
    if device and vol.kind == "loop":
        BACKENDS["loop"].release_readonly(driver.volume_path(vol), device)


# --------------------------------------------------------------------- service

def _rollback(undo, *args):
    """Undo a failed stage or publish; the first failure is the one the caller
    hears of, and the record stays when the undo fails, for the CO's retry."""
    try:
        undo(*args)
    except Exception as e:
        log.error("rollback %s failed: %s", undo.__name__, e)


def _check_new_target(target, access):
    """Before a publication is recorded (a refused one is never rolled back, so
    nothing at the target is unmounted or removed)."""
    if mounts.is_mountpoint(target):
        raise mounts.TargetInUse(f"{target} has another mount")
    targets.check_free(target, access)


def _learnable(tx, volume_id, volume_context):
    """A gluster volume this node has no record of, described by its context."""
    return bool(volume_context) and volume_context.get("kind") == "gluster" \
        and is_volume_id(volume_id) and tx.volume(volume_id) is None


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, driver):
        self.driver = driver

    def _volume(self, volume_id, volume_context=None):
        """The record of volume_id. A gluster volume made by another node's
        controller is learnt from its volume context and kept, so that
        unstage, unpublish and a restart work without that context."""
        with self.driver.store.transaction() as tx:
            if _learnable(tx, volume_id, volume_context):
                tx.add_volume(gluster.record_from_context(volume_id, volume_context))
            return get_volume(tx, volume_id)

    def _path(self, value, what):
        """A staging or target path for a new stage or publication."""
        config = self.driver.config
        return targets.check_location(checks.path(value, what), what, config.kubelet_dir,
                                      config.state_dir)

    def _ephemeral(self, volume_id):
        """The record of an inline volume, or None."""
        with self.driver.store.transaction() as tx:
            return tx.ephemeral(volume_id)

    def _known(self, volume_id, volume_context=None):
        """NOT_FOUND unless volume_id is recorded or learnable: checked before the
        paths, so that an unknown volume is NOT_FOUND whatever the paths are."""
        with self.driver.store.transaction() as tx:
            if not _learnable(tx, volume_id, volume_context):
                get_volume(tx, volume_id)

    @rpc("volume_id", "staging_target_path", "volume_capability")
    def NodeStageVolume(self, request, context):
        self._known(request.volume_id, request.volume_context)
        staging = self._path(request.staging_target_path, "staging_target_path")
        vol = self._volume(request.volume_id, request.volume_context)
        cap = checks.capability(request.volume_capability, vol.kind)
        access = checks.access_of(cap)
        wanted_fs = cap.mount.fs_type if access == "mount" else ""
        if vol.kind == "loop" and wanted_fs and vol.fs_type and wanted_fs != vol.fs_type:
            raise InvalidArgument(f"volume has {vol.fs_type}, not {wanted_fs}")
        if vol.kind == "loop" and not vol.fs_type and wanted_fs == "xfs" \
                and vol.size < mounts.XFS_MIN_SIZE:
            raise FailedPrecondition(f"volume of {vol.size} bytes is too small for xfs "
                                     f"({mounts.XFS_MIN_SIZE} at least); expand it first")
        if access == "mount" and os.path.lexists(staging) and not os.path.isdir(staging):
            raise InvalidArgument(f"staging path {staging} is not a directory")
        stage = Stage(vol.id, staging, access, checks.fingerprint(cap))
        with self.driver.busy.hold(vol.id):
            with self.driver.store.transaction() as tx:
                recorded = tx.stage(vol.id)
                if recorded and recorded != stage:
                    raise AlreadyExists(f"volume {vol.id} is staged at {recorded.path} "
                                        "with another path or capability")
                if not recorded:
                    tx.add_stage(stage)
            try:
                ensure_staged(self.driver, vol, stage)
            except BaseException:
                if not recorded:
                    _rollback(self._undo_stage, vol, stage)
                raise
        return csi_pb2.NodeStageVolumeResponse()

    def _undo_stage(self, vol, stage):
        """Unmount, then forget: a record outlives a failed unmount, so a retry
        cannot answer OK while the staging path is still mounted."""
        BACKENDS[vol.kind].unstage(self.driver.volume_path(vol), stage.path)
        with self.driver.store.transaction() as tx:
            tx.delete_stage(vol.id)

    @rpc("volume_id", "staging_target_path")
    def NodeUnstageVolume(self, request, context):
        vol = self._volume(request.volume_id)
        staging = checks.path(request.staging_target_path, "staging_target_path")
        with self.driver.busy.hold(vol.id):
            with self.driver.store.transaction() as tx:
                stage = tx.stage(vol.id)
                pubs = tx.publications(vol.id)
            if stage is None:
                BACKENDS[vol.kind].unstage(self.driver.volume_path(vol), "")  # stale loop devices
                return csi_pb2.NodeUnstageVolumeResponse()
            if stage.path != staging:
                return csi_pb2.NodeUnstageVolumeResponse()
            live = [p.target for p in pubs if mounts.is_mountpoint(p.target)]
            if live:
                raise FailedPrecondition(f"volume {vol.id} is still published at {', '.join(live)}")
            self._undo_stage(vol, stage)
            with self.driver.store.transaction() as tx:
                for pub in pubs:
                    tx.delete_publication(pub.target)
        return csi_pb2.NodeUnstageVolumeResponse()

    @rpc("volume_id", "target_path", "volume_capability")
    def NodePublishVolume(self, request, context):
        if ephemeral.requested(request.volume_context):
            target = self._path(request.target_path, "target_path")
            ephemeral.publish(self.driver, ephemeral.parse(
                request.volume_id, target, request.volume_capability, request.readonly,
                request.volume_context))
            return csi_pb2.NodePublishVolumeResponse()
        self._known(request.volume_id, request.volume_context)
        target = self._path(request.target_path, "target_path")
        if not request.staging_target_path:
            raise FailedPrecondition("staging_target_path is required: the volume must be staged")
        staging = self._path(request.staging_target_path, "staging_target_path")
        vol = self._volume(request.volume_id, request.volume_context)
        cap = checks.capability(request.volume_capability, vol.kind)
        mode = cap.access_mode.mode
        readonly = request.readonly or mode in (Mode.SINGLE_NODE_READER_ONLY,
                                                Mode.MULTI_NODE_READER_ONLY)
        pub = Publication(target, vol.id, readonly, checks.fingerprint(cap))
        with self.driver.busy.hold(vol.id):
            with self.driver.store.transaction() as tx:
                stage = tx.stage(vol.id)
                if stage is None or stage.path != staging:
                    raise FailedPrecondition(f"volume {vol.id} is not staged at {staging}")
                if stage.access != checks.access_of(cap):
                    raise InvalidArgument(f"volume {vol.id} is staged for {stage.access} access")
                recorded = tx.publication(target)
                if recorded and recorded != pub:
                    raise AlreadyExists(f"{target} is published with another volume or options")
                if not recorded:
                    _check_new_target(target, stage.access)
                    others = tx.publications(vol.id)
                    single = Mode.SINGLE_NODE_SINGLE_WRITER
                    if others and (mode == single or any(
                            json.loads(o.capability)["mode"] == single for o in others)):
                        raise FailedPrecondition(
                            f"volume {vol.id} is SINGLE_NODE_SINGLE_WRITER and already published")
                    tx.add_publication(pub)
            try:
                ensure_staged(self.driver, vol, stage)
                ensure_published(self.driver, vol, stage, pub)
            except BaseException:
                if not recorded:
                    _rollback(self._undo_publish, vol, pub)
                raise
        return csi_pb2.NodePublishVolumeResponse()

    def _undo_publish(self, vol, pub):
        """Unmount, then forget (as _undo_stage)."""
        remove_publication(self.driver, vol, pub)
        with self.driver.store.transaction() as tx:
            tx.delete_publication(pub.target)

    @rpc("volume_id", "target_path")
    def NodeUnpublishVolume(self, request, context):
        inline = self._ephemeral(request.volume_id)
        if inline:
            ephemeral.unpublish(self.driver, inline,
                                checks.path(request.target_path, "target_path"))
            return csi_pb2.NodeUnpublishVolumeResponse()
        vol = self._volume(request.volume_id)
        target = checks.path(request.target_path, "target_path")
        with self.driver.busy.hold(vol.id):
            with self.driver.store.transaction() as tx:
                pub = tx.publication(target)
            if pub is not None and pub.volume_id == vol.id:
                self._undo_publish(vol, pub)
        return csi_pb2.NodeUnpublishVolumeResponse()

    def _access_at(self, vol, path):
        """(access, stage, publications): access is 'mount' or 'block' when path is a
        staging or target path of vol, else NOT_FOUND. The path is only compared
        with the records, never used before it matched one, so it needs no
        other check: a relative or malformed path matches none."""
        with self.driver.store.transaction() as tx:
            stage = tx.stage(vol.id)
            pubs = tx.publications(vol.id)
        if stage and stage.path == path:
            access = stage.access
        elif any(p.target == path for p in pubs):
            access = stage.access if stage else "mount"
        else:
            raise NotFound(f"{path} is not a staging or target path of volume {vol.id}")
        if not os.path.exists(path):
            raise NotFound(f"{path} does not exist")
        return access, stage, pubs

    @rpc("volume_id", "volume_path")
    def NodeGetVolumeStats(self, request, context):
        path = request.volume_path
        inline = self._ephemeral(request.volume_id)
        if inline:
            if path != inline.target or not os.path.exists(path):
                raise NotFound(f"{path} is not the target of inline volume {inline.volume_id}")
            access, stage = "mount", None
            problem = "" if mounts.is_mountpoint(path) else f"{path} is not mounted"
        else:
            vol = self._volume(request.volume_id)
            access, stage, pubs = self._access_at(vol, path)
            problem = self.driver.problem(vol, stage, pubs)
            if not problem and not mounts.is_mountpoint(path) and not (
                    access == "block" and stage and stage.path == path):
                problem = f"{path} is not mounted"
        if access == "block":
            if stage and stage.path == path:
                total = vol.size
            else:
                total = mounts.block_size(path)
            usage = [Usage(unit=Usage.BYTES, total=total)]
        else:
            st = os.statvfs(path)
            usage = [
                Usage(unit=Usage.BYTES, total=st.f_blocks * st.f_frsize,
                      available=st.f_bavail * st.f_frsize,
                      used=(st.f_blocks - st.f_bfree) * st.f_frsize),
                Usage(unit=Usage.INODES, total=st.f_files, available=st.f_favail,
                      used=st.f_files - st.f_ffree),
            ]
        return csi_pb2.NodeGetVolumeStatsResponse(usage=usage,
                                                  volume_condition=volume_condition(problem))

    @rpc("volume_id", "volume_path")
    def NodeExpandVolume(self, request, context):
        if self._ephemeral(request.volume_id):
            raise FailedPrecondition("inline volumes keep the size they were published with")
        vol = self._volume(request.volume_id)
        path = request.volume_path
        required, _ = checks.capacity(request.capacity_range)
        with self.driver.busy.hold(vol.id):
            access, stage, _ = self._access_at(vol, path)
            if required > vol.size:
                raise OutOfRange(f"volume is {vol.size} bytes; expand it on the controller first")
            if stage is None:
                raise FailedPrecondition(f"volume {vol.id} is not staged")
            fs_type = vol.fs_type if access == "mount" else ""
            backend = BACKENDS[vol.kind]
            if not fs_type or backend.can_expand_online(fs_type):
                backend.node_expand(self.driver.volume_path(vol), stage.path, fs_type)
            else:
                self._expand_by_restaging(vol, stage)
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=vol.size)

    def _expand_by_restaging(self, vol, stage):
        """Grow a file system that cannot grow while mounted (ext4 without
        CAP_SYS_RESOURCE): possible only while no pod has it published."""
        with self.driver.store.transaction() as tx:
            live = [p.target for p in tx.publications(vol.id) if mounts.is_mountpoint(p.target)]
        if live:
            raise FailedPrecondition(
                f"{vol.fs_type} cannot grow while published here (the driver lacks "
                "CAP_SYS_RESOURCE); unpublish it, or it grows when next staged")
        BACKENDS[vol.kind].unstage(self.driver.volume_path(vol), stage.path)
        ensure_staged(self.driver, vol, stage)

    @rpc()
    def NodeGetCapabilities(self, request, context):
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=CAPABILITIES)

    @rpc()
    def NodeGetInfo(self, request, context):
        return csi_pb2.NodeGetInfoResponse(
            node_id=self.driver.config.node_id,
            max_volumes_per_node=self.driver.config.max_volumes,
            accessible_topology=csi_pb2.Topology(segments=self.driver.topology))
