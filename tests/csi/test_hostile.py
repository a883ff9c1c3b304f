"""Hostile and malformed input: names, IDs, sizes and paths chosen to escape
the state dir or the CO's directories. Each gets the right code, and nothing
is created, mounted or removed outside the test's temp dirs."""

import os
import uuid

import pytest

from .conftest import Code, MiB, code_of, is_mountpoint, kind_cap, mount_cap, mount_count, mounts_under, pb

BANNED_NAME_CHARS = ["\x00", "\x07", "\x1b", "\x7f", "\x85"]


@pytest.fixture
def canary(driver):
    """Files and directories next to the state dir, where an unchecked
    `volumes/<id>` or `snapshots/<id>` path would land."""
    made = []
    for rel in ["canary", "canary.img", "state/canary", "state/canary.img", "work-canary"]:
        p = driver.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("work-canary"):
            p.mkdir(exist_ok=True)
        else:
            p.write_text("do not touch")
        made.append(p)
    yield made
    for p in made:
        assert p.exists(), f"{p} was removed by the driver"
        p.rmdir() if p.is_dir() else p.unlink()


def test_escaping_names_are_only_names(csi, driver):
    for name in ["../../etc", "/etc/passwd", "..", "a/b", "vol-" + "0" * 32, "$(reboot)", " "]:
        vol = csi.create("bind", name=name)
        assert vol.volume_id.startswith("vol-") and "/" not in vol.volume_id
        snap = csi.snapshot(vol.volume_id, name=name)
        assert snap.snapshot_id.startswith("snap-") and "/" not in snap.snapshot_id
    for sub in ["volumes", "snapshots"]:
        for entry in (driver.state_dir / sub).iterdir():
            base = entry.name.removesuffix(".img")
            assert base.startswith(("vol-", "snap-")) and len(base.split("-", 1)[1]) == 32, entry
    assert not (driver.root / "etc").exists() and not (driver.state_dir / "etc").exists()


@pytest.mark.parametrize("bad", BANNED_NAME_CHARS, ids=lambda c: f"U+{ord(c):04X}")
def test_names_with_control_characters(csi, bad):
    assert code_of(csi.controller.CreateVolume,
                   csi.create_request("bind", name=f"pvc{bad}x")) == Code.INVALID_ARGUMENT
    vol = csi.create("bind")
    assert code_of(csi.controller.CreateSnapshot, pb.CreateSnapshotRequest(
        name=f"snap{bad}x", source_volume_id=vol.volume_id)) == Code.INVALID_ARGUMENT


def test_name_length_limit(csi):
    csi.create("bind", name="n" * 128)
    assert code_of(csi.controller.CreateVolume,
                   csi.create_request("bind", name="n" * 129)) == Code.INVALID_ARGUMENT
    assert code_of(csi.controller.CreateVolume,
                   csi.create_request("bind", name="n" * 100_000)) == Code.INVALID_ARGUMENT


@pytest.mark.parametrize("name", ["données-卷-\u2603", "tab\there", "new\nline", "\u00a0nbsp"])
def test_allowed_unusual_names(csi, name):
    vol = csi.create("bind", name=name)
    assert csi.create("bind", name=name).volume_id == vol.volume_id


HOSTILE_IDS = ["../canary", "../../canary", "../canary.img", "canary", "vol-../../canary",
               "/etc/passwd", "vol-" + "0" * 31 + "/", "vol-" + "A" * 32, "vol-\x00", "",
               "snap-../canary"]


@pytest.mark.parametrize("bad_id", [i for i in HOSTILE_IDS if i])
def test_hostile_ids_delete(csi, canary, bad_id):
    csi.delete(bad_id)
    csi.delete_snapshot(bad_id)


@pytest.mark.parametrize("bad_id", [i for i in HOSTILE_IDS if i])
def test_hostile_ids_elsewhere_not_found(csi, canary, bad_id):
    staging = csi.dir("staging")
    target = csi.path("target")
    cap = mount_cap()
    rng = pb.CapacityRange(required_bytes=64 * MiB)
    calls = [
        (csi.node.NodeStageVolume, csi.stage_request(bad_id, staging, cap)),
        (csi.node.NodePublishVolume, csi.publish_request(bad_id, staging, target, cap)),
        (csi.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
            volume_id=bad_id, target_path=str(target))),
        (csi.node.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
            volume_id=bad_id, staging_target_path=str(staging))),
        (csi.node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
            volume_id=bad_id, volume_path=str(staging))),
        (csi.controller.ControllerGetVolume, pb.ControllerGetVolumeRequest(volume_id=bad_id)),
        (csi.controller.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
            volume_id=bad_id, capacity_range=rng)),
        (csi.controller.ValidateVolumeCapabilities, pb.ValidateVolumeCapabilitiesRequest(
            volume_id=bad_id, volume_capabilities=[cap])),
        (csi.controller.GetSnapshot, pb.GetSnapshotRequest(snapshot_id=bad_id)),
    ]
    for fn, req in calls:
        assert code_of(fn, req) == Code.NOT_FOUND, type(req).__name__
    assert code_of(csi.controller.CreateSnapshot, pb.CreateSnapshotRequest(
        name=csi.name(), source_volume_id=bad_id)) == Code.NOT_FOUND
    assert code_of(csi.controller.CreateVolume, csi.create_request(
        "bind", source=pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(
            volume_id=bad_id)))) == Code.NOT_FOUND
    assert not is_mountpoint(staging) and not os.path.lexists(target)


@pytest.mark.parametrize("size", [2 ** 62, 2 ** 63 - 1])
def test_huge_sizes_create_nothing(csi, driver, size):
    start = csi.capacity()
    files_before = sorted(p.name for p in driver.state_dir.rglob("*"))
    for kind in ["bind", "ext4", "block"]:
        assert code_of(csi.controller.CreateVolume,
                       csi.create_request(kind, size=size)) == Code.RESOURCE_EXHAUSTED, kind
    vol = csi.create("ext4", size=32 * MiB)
    code = code_of(csi.controller.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
        volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=size)))
    assert code in (Code.OUT_OF_RANGE, Code.RESOURCE_EXHAUSTED)
    csi.delete(vol.volume_id)
    assert csi.capacity() == start
    files_after = sorted(p.name for p in driver.state_dir.rglob("*"))
    assert [f for f in files_after if f.startswith(("vol-", "snap-"))] == \
        [f for f in files_before if f.startswith(("vol-", "snap-"))]


# ------------------------------------------------------------ hostile paths
def _bad_paths(csi, driver):
    """(label, path) pairs that must be refused with INVALID_ARGUMENT."""
    base = csi.dir("base")
    link_to_etc = base / "etc-link"
    link_to_etc.symlink_to("/etc")
    escape = f"pp-escape-{uuid.uuid4().hex[:8]}"
    csi.guard(f"/etc/{escape}")
    return escape, [
        ("relative", "relative/target"),
        ("dot-dot", f"{base}/../../../etc/{escape}"),
        ("dot", f"{base}/./x"),
        ("trailing-slash", f"{base}/x/"),
        ("double-slash", f"{base}//x"),
        ("root", "/"),
        ("nul", f"{base}/x\x00y"),
        ("too-long", f"{base}/" + "x" * 5000),
        ("symlink-itself", str(link_to_etc)),
        ("symlink-parent", f"{link_to_etc}/{escape}"),
    ]


def test_hostile_staging_paths(csi, driver):
    vol = csi.create("ext4")
    cap = kind_cap("ext4")
    escape, paths = _bad_paths(csi, driver)
    etc_mounts = mount_count("/etc")
    for label, path in paths:
        code = code_of(csi.node.NodeStageVolume, csi.stage_request(vol.volume_id, path, cap))
        if code == Code.OK:     # let teardown unstage it through the driver too
            csi.staged.append((vol.volume_id, path))
        assert code == Code.INVALID_ARGUMENT, label
    assert not os.path.lexists(f"/etc/{escape}")
    assert mount_count("/etc") == etc_mounts, "something was mounted on /etc"
    assert not mounts_under(driver.root)


@pytest.mark.parametrize("kind", ["bind", "block"])
def test_hostile_target_paths(csi, driver, kind):
    vol = csi.create(kind)
    cap = kind_cap(kind)
    staging = csi.stage(vol.volume_id, cap)
    escape, paths = _bad_paths(csi, driver)
    etc_mounts = mount_count("/etc")
    for label, path in paths:
        code = code_of(csi.node.NodePublishVolume, csi.publish_request(
            vol.volume_id, staging, path, cap))
        if code == Code.OK:     # let teardown unpublish it through the driver too
            csi.published.append((vol.volume_id, path))
        assert code == Code.INVALID_ARGUMENT, label
        assert code_of(csi.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
            volume_id=vol.volume_id, target_path=path)) == Code.INVALID_ARGUMENT, label
    assert not os.path.lexists(f"/etc/{escape}")
    assert mount_count("/etc") == etc_mounts, "something was mounted on /etc"
    assert os.path.isdir("/etc") and not os.path.islink("/etc")
    assert os.path.exists("/etc/passwd")
    mounted = [p for p in mounts_under(driver.root) if not p.startswith(str(staging))]
    assert not mounted, mounted


def test_hostile_paths_for_stats_and_expand(csi, driver):
    vol, staging, target = csi.ready("ext4")
    escape, paths = _bad_paths(csi, driver)
    for label, path in paths:
        assert code_of(csi.node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
            volume_id=vol.volume_id, volume_path=path)) in (Code.INVALID_ARGUMENT, Code.NOT_FOUND), label
        assert code_of(csi.node.NodeExpandVolume, pb.NodeExpandVolumeRequest(
            volume_id=vol.volume_id, volume_path=path,
            capacity_range=pb.CapacityRange(required_bytes=64 * MiB))) in (
                Code.INVALID_ARGUMENT, Code.NOT_FOUND), label


def test_target_replaced_by_symlink_after_publish(csi, driver):
    """Someone swaps the published target for a symlink to /etc: unpublish
    must not unmount or delete /etc."""
    vol, staging, target = csi.ready("bind")
    csi.unpublish(vol.volume_id, target)
    target.symlink_to("/etc")
    etc_mounts = mount_count("/etc")
    code = code_of(csi.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
        volume_id=vol.volume_id, target_path=str(target)))
    assert code in (Code.OK, Code.INVALID_ARGUMENT)
    assert os.path.exists("/etc/passwd") and mount_count("/etc") == etc_mounts
    target.unlink()
