"""Bring the kernel and the state dir back in line with the records, before serving.

Runs at every start: after a crash (kill -9) or a reboot (mounts gone, loop
devices detached). Records are the truth for what was promised to the CO;
files and loop devices nobody recorded are leftovers of interrupted work.
"""

import logging
import os
import shutil

from csi import ephemeral, layout, mounts
from csi.backends import BACKENDS
from csi.node import ensure_published, ensure_staged

log = logging.getLogger(__name__)


def reconcile(driver):
    _clear_tmp(driver)
    with driver.store.transaction() as tx:
        volumes = {v.id: v for v in tx.volumes()}
        snapshot_ids = {s.id for s in tx.snapshots()}
        stages = {s.volume_id: s for s in tx.stages()}
    _remove_orphans(driver.layout.volumes, volumes.keys(), layout.is_volume_id)
    _remove_orphans(driver.layout.snapshots, snapshot_ids, layout.is_snapshot_id)
    for vol in volumes.values():
        if vol.id not in stages:
            BACKENDS[vol.kind].unstage(driver.volume_path(vol), "")  # stale loop devices
    for stage in stages.values():
        _restage(driver, volumes[stage.volume_id], stage)
    with driver.store.transaction() as tx:   # without what _restage dropped
        stages = {s.volume_id: s for s in tx.stages()}
        publications = tx.publications()
    for pub in publications:
        _republish(driver, volumes[pub.volume_id], stages.get(pub.volume_id), pub)
    ephemeral.reconcile(driver)


def _clear_tmp(driver):
    for name in os.listdir(driver.layout.tmp):
        path = os.path.join(driver.layout.tmp, name)
        log.info("reconcile: removing unfinished %s", path)
        if os.path.isfile(path):
            BACKENDS["loop"].delete(path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _remove_orphans(directory, known, is_id):
    for name in os.listdir(directory):
        base, kind = layout.split_name(name)
        if not is_id(base) or base in known:
            continue
        path = os.path.join(directory, name)
        log.info("reconcile: removing %s, which no record claims", path)
        BACKENDS[kind].delete(path)


def _restage(driver, vol, stage):
    if stage.access == "mount" and vol.kind == "loop" and mounts.is_mountpoint(stage.path):
        mounts.thaw(stage.path, check=False)  # a crash mid-snapshot
    # a mount point whose FUSE client died is no directory, yet not gone: keep
    # its records, so that unpublish and unstage can still unmount it
    if stage.access == "mount" and not os.path.isdir(stage.path) \
            and not mounts.is_mountpoint(stage.path):
        log.warning("reconcile: staging path %s of %s is gone; dropping the staging",
                    stage.path, vol.id)
        with driver.store.transaction() as tx:
            for pub in tx.publications(vol.id):
                tx.delete_publication(pub.target)
            tx.delete_stage(vol.id)
        BACKENDS[vol.kind].unstage(driver.volume_path(vol), "")
        return
    try:
        ensure_staged(driver, vol, stage)
        log.info("reconcile: %s staged at %s", vol.id, stage.path)
    except Exception as e:
        log.error("reconcile: cannot restore staging of %s at %s: %s", vol.id, stage.path, e)


def _republish(driver, vol, stage, pub):
    gone = not (os.path.lexists(pub.target) or mounts.is_mountpoint(pub.target))
    if stage is None or gone or os.path.islink(pub.target):
        log.warning("reconcile: dropping publication of %s at %s", vol.id, pub.target)
        with driver.store.transaction() as tx:
            tx.delete_publication(pub.target)
        return
    try:
        ensure_published(driver, vol, stage, pub)
        log.info("reconcile: %s published at %s", vol.id, pub.target)
    except Exception as e:
        log.error("reconcile: cannot restore publication of %s at %s: %s", vol.id, pub.target, e)
