"""Ephemeral inline volumes: published straight to a pod's target, without
CreateVolume or staging, and gone with the pod.

kubelet asks with NodePublishVolume, `csi.storage.k8s.io/ephemeral: "true"`
in the volume context (the CSIDriver needs `podInfoOnMount: true`) and the
pod's volume attributes: `kind` (bind, loop, tmpfs; default bind) and `size`
(a Kubernetes quantity). The record is written before anything is made, so a
crash leaves something the start-up reconcile can finish or remove; what is
made is named by an ID of ours (`eph-...`), never by the CO's volume ID.
"""

import dataclasses
import json
import logging
import os
import re

from csi import checks, mounts, targets
from csi.backends import BACKENDS
from csi.backends.tmpfs import TmpfsBackend
from csi.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from csi.layout import is_ephemeral_id, is_snapshot_id, is_volume_id, new_ephemeral_id, split_name
from csi.quantity import BadQuantity, parse_bytes
from csi.state import Ephemeral

log = logging.getLogger(__name__)

EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
ATTRIBUTES = frozenset({"kind", "size"})
KINDS = ("bind", "loop", "tmpfs")
DEFAULT_SIZE = {"bind": 0, "loop": 1 << 30, "tmpfs": 64 << 20}
MIN_LOOP_SIZE = 4 << 20
# kubelet's IDs are "csi-" + a sha256 in hex; any CO's must be a plain name
CO_VOLUME_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
TMPFS = TmpfsBackend()


def requested(volume_context):
    return volume_context.get(EPHEMERAL_KEY) == "true"


def _memory_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def parse(volume_id, target, cap, readonly, context):
    """The Ephemeral an inline NodePublishVolume asks for (local_id still empty)."""
    if not CO_VOLUME_ID.match(volume_id) or is_volume_id(volume_id) or is_snapshot_id(volume_id):
        raise InvalidArgument(f"not a volume ID for an inline volume: {volume_id!r}")
    checks.parameters(context, ATTRIBUTES)     # kubelet adds csi.storage.k8s.io/pod.* too
    kind = context.get("kind", "bind")
    if kind not in KINDS:
        raise InvalidArgument(f"unknown kind {kind!r} for an inline volume; use one of {KINDS}")
    cap = checks.capability(cap, kind)
    if checks.access_of(cap) != "mount":
        raise InvalidArgument("inline volumes have mount access only")
    fs_type = cap.mount.fs_type
    if kind == "loop":
        fs_type = fs_type or "ext4"
    elif fs_type:
        raise InvalidArgument(f"a {kind} inline volume has no fs_type (got {fs_type!r})")
    try:
        size = parse_bytes(context["size"]) if "size" in context else DEFAULT_SIZE[kind]
    except BadQuantity as e:
        raise InvalidArgument(str(e)) from None
    if kind == "tmpfs" and size <= 0:
        raise InvalidArgument("a tmpfs inline volume needs a size above 0")
    if kind == "loop":
        least = mounts.XFS_MIN_SIZE if fs_type == "xfs" else MIN_LOOP_SIZE
        if size < least:
            raise InvalidArgument(f"a loop inline volume with {fs_type} needs a size of at "
                                  f"least {least} bytes")
        size = -(-size // 4096) * 4096
    return Ephemeral(volume_id, "", target, kind, fs_type, size, readonly,
                     checks.fingerprint(cap))


def _same_request(a, b):
    return (a.target, a.kind, a.fs_type, a.size, a.readonly, a.capability) == \
        (b.target, b.kind, b.fs_type, b.size, b.readonly, b.capability)


def publish(driver, wanted):
    """NodePublishVolume of an inline volume: record, then make and mount."""
    with driver.busy.hold(wanted.volume_id, wanted.target):
        with driver.store.transaction() as tx:
            eph = tx.ephemeral(wanted.volume_id)
            if eph is not None and not _same_request(eph, wanted):
                raise AlreadyExists(f"inline volume {wanted.volume_id} is published at "
                                    f"{eph.target} with other attributes")
            if eph is None:
                if tx.publication(wanted.target) or tx.ephemeral_at(wanted.target):
                    raise AlreadyExists(f"{wanted.target} is published with another volume")
                if mounts.is_mountpoint(wanted.target):
                    raise mounts.TargetInUse(f"{wanted.target} has another mount")
                targets.check_free(wanted.target, "mount")
                _check_room(driver, tx, wanted)
                eph = dataclasses.replace(wanted, local_id=new_ephemeral_id())
                tx.add_ephemeral(eph)
                made = True
            else:
                made = False
        try:
            ensure(driver, eph)
        except BaseException:
            if made:
                try:
                    remove(driver, eph)
                except Exception as e:
                    log.error("rollback of inline volume %s failed: %s", eph.volume_id, e)
            raise


def _check_room(driver, tx, eph):
    if eph.kind == "tmpfs":
        limit, what = _memory_bytes(), "the node's memory"
    else:
        limit, what = driver.available_bytes(tx), "the driver's free capacity"
    if eph.size > limit:
        raise ResourceExhausted(f"inline volume of {eph.size} bytes exceeds {what} "
                                f"({limit} bytes)")


def ensure(driver, eph):
    """Make a recorded inline volume true on the node (also after a reboot)."""
    flags = json.loads(eph.capability).get("flags", [])
    if not mounts.is_mountpoint(eph.target):
        targets.check_free(eph.target, "mount")
        targets.make(eph.target, "mount")
    if eph.kind == "tmpfs":
        TMPFS.mount(eph.target, eph.size, flags, readonly=eph.readonly)
        return
    backend = BACKENDS[eph.kind]
    path = driver.layout.ephemeral(eph.local_id, eph.kind)
    if not os.path.lexists(path):
        _create(driver, backend, eph, path)
    if eph.kind == "bind":
        flags = mounts.vfs_flags(flags)
    backend.stage(path, eph.target, "mount", eph.fs_type, flags + (["ro"] if eph.readonly else []))


def _create(driver, backend, eph, path):
    """Make the directory or formatted file under a temporary name, then
    rename it into place: a crash never leaves a half-formatted volume."""
    scratch = os.path.join(driver.layout.tmp, os.path.basename(path))
    backend.delete(scratch)
    backend.create(scratch, eph.size, eph.fs_type)
    os.rename(scratch, path)


def remove(driver, eph):
    """Unmount and remove whatever was made for an inline volume, then forget it."""
    if eph.kind == "tmpfs":
        TMPFS.unmount(eph.target)
    else:
        path = driver.layout.ephemeral(eph.local_id, eph.kind)
        backend = BACKENDS[eph.kind]
        backend.unstage(path, eph.target)
        if mounts.is_mountpoint(eph.target):
            raise mounts.TargetInUse(f"{eph.target} has a mount that is not this volume's")
        backend.delete(path)
    targets.remove(eph.target)
    with driver.store.transaction() as tx:
        tx.delete_ephemeral(eph.volume_id)


def unpublish(driver, eph, target):
    with driver.busy.hold(eph.volume_id):
        if target == eph.target:
            remove(driver, eph)


def pod_gone(eph):
    """The pod's directory that held the target is gone (the target with it)."""
    return not os.path.isdir(os.path.dirname(eph.target)) or not (
        os.path.lexists(eph.target) or mounts.is_mountpoint(eph.target))


def reconcile(driver):
    """At start-up: remove the inline volumes of pods that are gone, mount the
    others again (after a reboot), and delete what no record claims."""
    with driver.store.transaction() as tx:
        records = tx.ephemerals()
    for eph in records:
        try:
            if pod_gone(eph):
                log.info("reconcile: pod of inline volume %s is gone; removing it", eph.volume_id)
                remove(driver, eph)
            else:
                ensure(driver, eph)
        except Exception as e:
            log.error("reconcile: inline volume %s at %s: %s", eph.volume_id, eph.target, e)
    known = {eph.local_id for eph in records}
    for name in os.listdir(driver.layout.ephemeral_dir):
        base, kind = split_name(name)
        if is_ephemeral_id(base) and base not in known:
            log.info("reconcile: removing %s, which no record claims", name)
            BACKENDS[kind].delete(os.path.join(driver.layout.ephemeral_dir, name))
