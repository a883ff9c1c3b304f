"""Several RPCs on the same volume (or the same name) at the same moment, as a
CO that lost track might send them: each either proceeds alone, succeeds
idempotently, or is turned away with ABORTED, and nothing is corrupted."""

import os
import subprocess
import threading
import time

import grpc

from .conftest import RPC_TIMEOUT, Code, MiB, code_of, kind_cap, mount_count, pb

THREADS = 8


def all_at_once(calls):
    """Run `calls` (list of (stub method, request)) in threads released by one
    barrier; returns [(code, response or None)] in the same order."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, fn, req):
        barrier.wait()
        try:
            results[i] = (Code.OK, fn(req, timeout=RPC_TIMEOUT))
        except grpc.RpcError as err:
            results[i] = (err.code(), err.details())

    threads = [threading.Thread(target=run, args=(i, fn, req)) for i, (fn, req) in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RPC_TIMEOUT + 30)
    assert all(r is not None for r in results), "an RPC never returned"
    return results


def codes(results):
    return [code for code, _ in results]


def test_concurrent_create_same_name(csi):
    req = csi.create_request("ext4")
    before = {e.volume.volume_id for e in csi.list_all_volumes()}
    results = all_at_once([(csi.controller.CreateVolume, req)] * THREADS)
    ids = {resp.volume.volume_id for code, resp in results if code == Code.OK}
    for volume_id in ids:
        csi.track_volume(volume_id)
    assert set(codes(results)) <= {Code.OK, Code.ABORTED}, results
    assert len(ids) == 1, f"one name gave several volumes: {ids}"
    after = {e.volume.volume_id for e in csi.list_all_volumes()}
    assert after - before == ids
    # and a calm retry returns the same volume
    assert csi.create(request=req).volume_id in ids


def test_concurrent_snapshot_same_name(csi):
    vol = csi.create("ext4")
    req = pb.CreateSnapshotRequest(name=csi.name("snap"), source_volume_id=vol.volume_id)
    results = all_at_once([(csi.controller.CreateSnapshot, req)] * THREADS)
    ids = {resp.snapshot.snapshot_id for code, resp in results if code == Code.OK}
    csi.snapshots.extend(ids)
    assert set(codes(results)) <= {Code.OK, Code.ABORTED}, results
    assert len(ids) == 1
    listed = {e.snapshot.snapshot_id for e in csi.list_all_snapshots(source_volume_id=vol.volume_id)}
    assert listed == ids


def test_concurrent_stage_same_volume(csi, driver):
    vol = csi.create("ext4")
    cap = kind_cap("ext4")
    staging = csi.dir("staging")
    req = csi.stage_request(vol.volume_id, staging, cap)
    results = all_at_once([(csi.node.NodeStageVolume, req)] * THREADS)
    csi.staged.append((vol.volume_id, str(staging)))
    assert set(codes(results)) <= {Code.OK, Code.ABORTED}, results
    assert Code.OK in codes(results)
    assert mount_count(staging) == 1, "concurrent stages stacked mounts"
    img = driver.state_dir / "volumes" / f"{vol.volume_id}.img"
    out = subprocess.run(["losetup", "-j", str(img)], capture_output=True, text=True).stdout
    assert len(out.splitlines()) == 1, f"several loop devices for one volume:\n{out}"


def test_concurrent_publish_same_target(csi):
    vol = csi.create("bind")
    cap = kind_cap("bind")
    staging = csi.stage(vol.volume_id, cap)
    target = csi.path("target")
    req = csi.publish_request(vol.volume_id, staging, target, cap)
    results = all_at_once([(csi.node.NodePublishVolume, req)] * THREADS)
    csi.published.append((vol.volume_id, str(target)))
    assert set(codes(results)) <= {Code.OK, Code.ABORTED}, results
    assert Code.OK in codes(results)
    assert mount_count(target) == 1


def test_mixed_operations_on_one_volume(csi, driver):
    """Expand, snapshot, stats, re-stage, re-publish and delete of one published
    volume, all at once: no corruption, no half-made snapshot, still usable."""
    data = b"precious" * 4096
    vol, staging, target = csi.ready("ext4", size=32 * MiB)
    cap = kind_cap("ext4")
    with open(target / "data.bin", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.sync()
    snap_names = [csi.name("snap") for _ in range(3)]
    calls = [
        (csi.controller.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=48 * MiB))),
        (csi.controller.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=48 * MiB))),
        *[(csi.controller.CreateSnapshot, pb.CreateSnapshotRequest(
            name=n, source_volume_id=vol.volume_id)) for n in snap_names],
        (csi.controller.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vol.volume_id)),
        (csi.node.NodeStageVolume, csi.stage_request(vol.volume_id, staging, cap)),
        (csi.node.NodePublishVolume, csi.publish_request(vol.volume_id, staging, target, cap)),
        (csi.node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
            volume_id=vol.volume_id, volume_path=str(target))),
    ]
    results = all_at_once(calls)
    made_snaps = {resp.snapshot.snapshot_id for (code, resp), (fn, _) in zip(results, calls)
                  if code == Code.OK and isinstance(resp, pb.CreateSnapshotResponse)}
    csi.snapshots.extend(made_snaps)

    allowed = {Code.OK, Code.ABORTED}
    for (code, detail), (fn, req) in zip(results, calls):
        ok = allowed | ({Code.FAILED_PRECONDITION} if isinstance(req, pb.DeleteVolumeRequest) else set())
        assert code in ok, f"{type(req).__name__}: {code} {detail}"
    delete_code = results[5][0]
    assert delete_code != Code.OK, "a published volume was deleted"

    # only snapshots that were reported are there, and they are complete
    listed = {e.snapshot.snapshot_id for e in csi.list_all_snapshots(source_volume_id=vol.volume_id)}
    assert listed == made_snaps
    # the volume is intact and still usable
    assert (target / "data.bin").read_bytes() == data
    assert mount_count(target) == 1 and mount_count(staging) == 1
    got = csi.get_volume(vol.volume_id)
    assert not got.status.volume_condition.abnormal
    csi.release(vol.volume_id, staging, target)
    img = driver.state_dir / "volumes" / f"{vol.volume_id}.img"
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, f"file system damaged:\n{fsck.stdout}{fsck.stderr}"
    for snap_id in made_snaps:   # each reported snapshot restores to the same data
        restored, s2, t2 = csi.ready("ext4", source=pb.VolumeContentSource(
            snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap_id)))
        assert (t2 / "data.bin").read_bytes() == data
        csi.release(restored.volume_id, s2, t2)


def test_operations_on_different_volumes_run_in_parallel(csi):
    """Busy-ness is per volume: stages of distinct volumes all succeed."""
    vols = [csi.create("ext4") for _ in range(4)]
    cap = kind_cap("ext4")
    stagings = [csi.dir("staging") for _ in vols]
    results = all_at_once([(csi.node.NodeStageVolume, csi.stage_request(v.volume_id, s, cap))
                           for v, s in zip(vols, stagings)])
    csi.staged.extend((v.volume_id, str(s)) for v, s in zip(vols, stagings))
    assert codes(results) == [Code.OK] * len(vols), results
    assert all(mount_count(s) == 1 for s in stagings)


def test_busy_volume_turns_second_operation_away(csi):
    """While a slow CreateSnapshot copies a volume holding real data, an
    expansion of the same volume must not run alongside it: it is ABORTED
    (or, if it returns OK, the snapshot had already finished)."""
    vol, staging, target = csi.ready("xfs")
    chunk = os.urandom(MiB)
    with open(target / "bulk.bin", "wb") as f:   # ~160 MiB of real blocks: a copy takes a while
        for _ in range(160):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    csi.release(vol.volume_id, staging, target)
    size = vol.capacity_bytes
    for attempt in range(5):
        future = csi.controller.CreateSnapshot.future(pb.CreateSnapshotRequest(
            name=csi.name("snap"), source_volume_id=vol.volume_id), timeout=RPC_TIMEOUT)
        time.sleep(0.02)
        size += MiB
        code = code_of(csi.controller.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=size)))
        snapshot_running = not future.done()
        csi.snapshots.append(future.result().snapshot.snapshot_id)
        if code == Code.ABORTED:
            return
        assert code == Code.OK, code
        assert not snapshot_running, "expansion ran while a snapshot of the volume was being cut"
    raise AssertionError("the snapshot was always done before the expansion arrived: "
                         "no busy window observed in 5 attempts")
