"""The driver dies (kill -9) or the node reboots: after a restart on the same
state dir the volumes are still there, published data is still readable,
and the CO's retries of stage/publish work without stacking mounts."""

import os
import subprocess
import threading
import time

import grpc

from .conftest import (
    RPC_TIMEOUT,
    driver_children,
    is_mountpoint,
    kind_cap,
    loops_backed_under,
    loops_for_file,
    mount_count,
    mounts_under,
    pb,
    settle,
)
from .test_lifecycle import payload, read_data, write_data

KINDS_RESTART = ["bind", "ext4", "block"]


def ready_with_data(csi, kinds):
    """{kind: (volume, staging, target, data)} for published volumes holding data."""
    out = {}
    for seed, kind in enumerate(kinds):
        vol, staging, target = csi.ready(kind)
        data = payload(64 * 1024, seed=seed + 20)
        write_data(kind, target, data)
        out[kind] = (vol, staging, target, data)
    return out


def assert_usable_again(csi, volumes):
    """CO retries after a restart: stage and publish again are OK, one mount
    each, data intact, condition normal."""
    for kind, (vol, staging, target, data) in volumes.items():
        cap = kind_cap(kind)
        csi.stage(vol.volume_id, cap, staging)
        csi.publish(vol.volume_id, staging, cap, target)
        assert mount_count(target) == 1, f"{kind}: target mounted {mount_count(target)} times"
        if kind != "block":
            assert mount_count(staging) == 1, f"{kind}: staging mounted {mount_count(staging)} times"
        assert read_data(kind, target, len(data)) == data, f"{kind}: data lost"
        got = csi.get_volume(vol.volume_id)
        assert not got.status.volume_condition.abnormal, got.status.volume_condition.message
        assert not csi.stats(vol.volume_id, target, staging).volume_condition.abnormal


def test_kill9_between_rpcs(csi_own, own_driver):
    csi = csi_own
    volumes = ready_with_data(csi, KINDS_RESTART)
    snap = csi.snapshot(volumes["ext4"][0].volume_id)
    own_driver.kill9()
    own_driver.start()

    listed = {e.volume.volume_id for e in csi.list_all_volumes()}
    assert listed == {v[0].volume_id for v in volumes.values()}
    assert [e.snapshot.snapshot_id for e in csi.list_all_snapshots()] == [snap.snapshot_id]
    # what a pod sees did not change while the driver was away
    for kind, (vol, staging, target, data) in volumes.items():
        assert read_data(kind, target, len(data)) == data
    assert_usable_again(csi, volumes)
    # and new work goes on
    restored, staging, target = csi.ready("ext4", source=pb.VolumeContentSource(
        snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)))
    vol, _, _, data = volumes["ext4"]
    assert read_data("ext4", target, len(data)) == data


def _kill_while(driver, future, probe, timeout=20):
    """Kill -9 the driver as soon as `probe()` says the RPC is in flight.
    Returns True if the kill happened while the RPC was still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not future.done():
        if probe():
            driver.kill9()
            return True
        time.sleep(0.0005)
    driver.kill9()
    return False


def test_kill9_during_stage_of_loop_volume(csi_own, own_driver):
    """The driver is killed while NodeStage of an ext4 loop volume runs (a
    child such as losetup or mount is running, or the loop device is already
    attached but the RPC has not answered). The retried stage must succeed,
    mount once, and unstage must leave nothing behind."""
    csi = csi_own
    cap = kind_cap("ext4")
    in_flight = 0
    for attempt in range(4):
        vol = csi.create("ext4")
        staging = csi.dir("staging")
        img = own_driver.state_dir / "volumes" / f"{vol.volume_id}.img"
        future = own_driver.node.NodeStageVolume.future(
            csi.stage_request(vol.volume_id, staging, cap), timeout=RPC_TIMEOUT)
        pid = own_driver.proc.pid
        caught = _kill_while(own_driver, future,
                             lambda: driver_children(pid) or loops_for_file(img))
        in_flight += caught
        try:
            future.result(timeout=5)
        except grpc.RpcError:
            pass
        own_driver.start()
        csi.stage(vol.volume_id, cap, staging)
        assert mount_count(staging) == 1
        assert len(loops_for_file(img)) == 1, "loop devices leaked by the interrupted stage"
        target = csi.publish(vol.volume_id, staging, cap)
        write_data("ext4", target, b"after the crash")
        csi.release(vol.volume_id, staging, target)
        assert not settle(lambda: loops_for_file(img))
        assert not is_mountpoint(staging)
    assert in_flight, "never managed to kill the driver while a stage was in flight"


def test_kill9_during_create(csi_own, own_driver):
    """Killed while CreateVolume formats a loop volume: the retried create
    gives one volume, and nothing half-made stays in the state dir."""
    csi = csi_own
    req = csi.create_request("xfs")       # mkfs.xfs of 320 MiB: a wide window
    future = own_driver.controller.CreateVolume.future(req, timeout=RPC_TIMEOUT)
    pid = own_driver.proc.pid
    caught = _kill_while(own_driver, future, lambda: driver_children(pid))
    own_driver.start()
    vol = csi.create(request=req)
    assert [e.volume.volume_id for e in csi.list_all_volumes()] == [vol.volume_id]
    files = sorted(p.name for p in (own_driver.state_dir / "volumes").iterdir())
    assert files == [f"{vol.volume_id}.img"], f"half-made volumes left: {files}"
    tmp = own_driver.state_dir / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), "tmp/ not emptied on start"
    vol2, staging, target = csi.ready("xfs", name=req.name)
    assert vol2.volume_id == vol.volume_id
    assert caught, "the create finished before the kill: no crash was tested"


def test_restart_with_sigterm_keeps_mounts(csi_own, own_driver):
    csi = csi_own
    volumes = ready_with_data(csi, KINDS_RESTART)
    mounted = sorted(mounts_under(own_driver.root))
    own_driver.restart()
    assert sorted(mounts_under(own_driver.root)) == mounted, "a restart changed the mounts"
    assert_usable_again(csi, volumes)


def test_reboot(csi_own, own_driver):
    """Simulated reboot: the driver stops, every mount and loop device of this
    test's state dir disappears (directories stay, as on a real node), the
    driver starts again. The CO re-stages and re-publishes: data intact."""
    csi = csi_own
    volumes = ready_with_data(csi, KINDS_RESTART)
    os.sync()
    own_driver.stop()
    for point in sorted(mounts_under(own_driver.root), key=len, reverse=True):
        subprocess.run(["umount", point], check=True)
    for dev in loops_backed_under(own_driver.state_dir):
        subprocess.run(["losetup", "-d", dev], check=True)
    _wait_detached(own_driver.state_dir)
    assert not mounts_under(own_driver.root)

    own_driver.start()
    listed = {e.volume.volume_id for e in csi.list_all_volumes()}
    assert listed == {v[0].volume_id for v in volumes.values()}
    assert_usable_again(csi, volumes)


def test_reboot_then_unpublish_without_republish(csi_own, own_driver):
    """After a reboot a CO may also just clean up: unpublish, unstage and
    delete work without a stage/publish first, and leave nothing."""
    csi = csi_own
    volumes = ready_with_data(csi, KINDS_RESTART)
    own_driver.stop()
    for point in sorted(mounts_under(own_driver.root), key=len, reverse=True):
        subprocess.run(["umount", point], check=True)
    for dev in loops_backed_under(own_driver.state_dir):
        subprocess.run(["losetup", "-d", dev], check=True)
    _wait_detached(own_driver.state_dir)
    own_driver.start()
    for kind, (vol, staging, target, data) in volumes.items():
        csi.unpublish(vol.volume_id, target)
        csi.unstage(vol.volume_id, staging)
        csi.delete(vol.volume_id)
    assert not mounts_under(own_driver.root)
    assert not settle(lambda: loops_backed_under(own_driver.state_dir))


def _wait_detached(state_dir):
    assert not settle(lambda: loops_backed_under(state_dir))


def test_restart_during_concurrent_traffic(csi_own, own_driver):
    """kill -9 while several clients create and delete bind volumes: after the
    restart, the volumes the driver reported created (and not deleted) are
    listed, and none that it never reported exists beyond a retry."""
    csi = csi_own
    created, stop = [], threading.Event()

    def client(n):
        i = 0
        while not stop.is_set():
            req = csi.create_request("bind", name=f"traffic-{n}-{i}")
            try:
                vol = own_driver.controller.CreateVolume(req, timeout=RPC_TIMEOUT).volume
                created.append((req, vol.volume_id))
            except (grpc.RpcError, ValueError, AttributeError):
                return
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    own_driver.kill9()
    stop.set()
    for t in threads:
        t.join(30)
    own_driver.start()
    listed = {e.volume.volume_id for e in csi.list_all_volumes()}
    for volume_id in listed:
        csi.track_volume(volume_id)
    reported = {volume_id for _, volume_id in created}
    assert reported <= listed, f"reported volumes lost: {reported - listed}"
    assert len(listed - reported) <= 3, "more unreported volumes than in-flight creates"
    for req, volume_id in created:   # retries of reported creates are idempotent
        assert csi.create(request=req).volume_id == volume_id
    assert created, "no create finished before the kill"
