"""Node service: the spec's error tables and idempotency of stage, publish,
unpublish and unstage, observed on the host's mount table."""

import os
import stat

import pytest

from .conftest import (
    EXT4_ONLINE_GROW,
    KINDS,
    Code,
    MiB,
    Mode,
    block_cap,
    code_of,
    is_mountpoint,
    kind_cap,
    loops_for_file,
    mount_cap,
    mount_count,
    pb,
    settle,
)

UNKNOWN_VOL = "vol-" + "0" * 32
KINDS_FAST = ["bind", "ext4", "block"]


def stage_code(csi, volume_id, staging, cap):
    return code_of(csi.node.NodeStageVolume, csi.stage_request(volume_id, staging, cap))


def publish_code(csi, volume_id, staging, target, cap, readonly=False):
    return code_of(csi.node.NodePublishVolume,
                   csi.publish_request(volume_id, staging, target, cap, readonly))


# ---------------------------------------------------------- NodeStageVolume
class TestStage:
    def test_missing_fields(self, csi):
        vol = csi.create("ext4")
        staging = csi.dir("staging")
        call = csi.node.NodeStageVolume
        cap = mount_cap("ext4")
        assert code_of(call, pb.NodeStageVolumeRequest(
            staging_target_path=str(staging), volume_capability=cap)) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id, volume_capability=cap)) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=str(staging))) == Code.INVALID_ARGUMENT
        assert not is_mountpoint(staging)

    def test_unknown_volume(self, csi):
        assert stage_code(csi, UNKNOWN_VOL, csi.dir("staging"), mount_cap()) == Code.NOT_FOUND

    @pytest.mark.parametrize("mode", [Mode.MULTI_NODE_MULTI_WRITER, Mode.MULTI_NODE_READER_ONLY,
                                      Mode.UNKNOWN], ids=lambda m: Mode.Name(m))
    def test_refused_modes(self, csi, mode):
        vol = csi.create("ext4")
        staging = csi.dir("staging")
        assert stage_code(csi, vol.volume_id, staging, mount_cap("ext4", mode)) == Code.INVALID_ARGUMENT
        assert not is_mountpoint(staging)

    @pytest.mark.parametrize("kind", KINDS_FAST)
    def test_idempotent(self, csi, driver, kind):
        vol = csi.create(kind)
        cap = kind_cap(kind)
        staging = csi.stage(vol.volume_id, cap)
        csi.stage(vol.volume_id, cap, staging)
        if kind == "block":
            # block staging mounts nothing; exactly one loop device for the file
            img = driver.state_dir / "volumes" / f"{vol.volume_id}.img"
            assert len(loops_for_file(img)) == 1
            assert mount_count(staging) == 0
        else:
            assert mount_count(staging) == 1, "a repeated stage stacked a second mount"

    def test_other_path_already_exists(self, csi):
        vol = csi.create("ext4")
        cap = mount_cap("ext4")
        csi.stage(vol.volume_id, cap)
        other = csi.dir("staging2")
        assert stage_code(csi, vol.volume_id, other, cap) == Code.ALREADY_EXISTS
        assert not is_mountpoint(other)

    def test_other_capability_already_exists(self, csi):
        vol = csi.create("ext4")
        staging = csi.stage(vol.volume_id, mount_cap("ext4"))
        assert stage_code(csi, vol.volume_id, staging,
                          mount_cap("ext4", flags=["noatime"])) == Code.ALREADY_EXISTS
        assert stage_code(csi, vol.volume_id, staging, block_cap()) == Code.ALREADY_EXISTS
        assert mount_count(staging) == 1

    @pytest.mark.parametrize("kind", ["bind", "ext4"])
    def test_mount_flags_applied(self, csi, kind):
        cap = mount_cap(KIND_FS[kind], flags=["noatime", "nodev"])
        vol = csi.create(kind, caps=[cap])
        staging = csi.stage(vol.volume_id, cap)
        target = csi.publish(vol.volume_id, staging, cap)
        for path in (staging, target):
            options = _mount_options(path)
            assert {"noatime", "nodev"} <= options, f"{path}: {options}"

    def test_other_fs_type_on_formatted_volume(self, csi):
        vol = csi.create("ext4")
        staging = csi.dir("staging")
        assert stage_code(csi, vol.volume_id, staging, mount_cap("xfs")) == Code.INVALID_ARGUMENT
        assert not is_mountpoint(staging)

    def test_bind_volume_as_block(self, csi):
        vol = csi.create("bind")
        assert stage_code(csi, vol.volume_id, csi.dir("staging"), block_cap()) in (
            Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION)

    def test_block_only_volume_formatted_at_first_mount_stage(self, csi):
        vol = csi.create("block")
        cap = mount_cap("xfs")
        # xfs needs 300 MiB: grow first, then stage with a file system
        csi.expand(vol.volume_id, 320 * MiB)
        staging = csi.stage(vol.volume_id, cap)
        target = csi.publish(vol.volume_id, staging, cap)
        (target / "f").write_text("hello")
        assert _fs_type(target) == "xfs"

    def test_staged_volume_cannot_be_deleted(self, csi):
        vol = csi.create("ext4")
        csi.stage(vol.volume_id, mount_cap("ext4"))
        assert code_of(csi.controller.DeleteVolume,
                       pb.DeleteVolumeRequest(volume_id=vol.volume_id)) == Code.FAILED_PRECONDITION
        assert csi.get_volume(vol.volume_id).volume.volume_id == vol.volume_id


KIND_FS = {"bind": "", "ext4": "ext4"}


def _mount_options(path):
    """Per-mount options of the top mount at path."""
    path = os.path.realpath(path)
    options = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                options = set(fields[5].split(","))
    return options or set()


def _fs_type(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                return fields[fields.index("-") + 1]
    return None


# -------------------------------------------------------- NodeUnstageVolume
class TestUnstage:
    def test_missing_fields(self, csi):
        vol = csi.create("bind")
        call = csi.node.NodeUnstageVolume
        assert code_of(call, pb.NodeUnstageVolumeRequest(
            staging_target_path=str(csi.dir("s")))) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.NodeUnstageVolumeRequest(
            volume_id=vol.volume_id)) == Code.INVALID_ARGUMENT

    def test_unknown_volume(self, csi):
        assert code_of(csi.node.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
            volume_id=UNKNOWN_VOL, staging_target_path=str(csi.dir("s")))) == Code.NOT_FOUND

    @pytest.mark.parametrize("kind", KINDS_FAST)
    def test_twice_and_never_staged(self, csi, driver, kind):
        vol = csi.create(kind)
        never = csi.dir("never")
        csi.unstage(vol.volume_id, never)           # known volume, not staged there: OK
        assert never.is_dir(), "unstage removed a directory it does not own"
        staging = csi.stage(vol.volume_id, kind_cap(kind))
        csi.unstage(vol.volume_id, staging)
        csi.unstage(vol.volume_id, staging)
        assert not is_mountpoint(staging)
        assert staging.is_dir(), "the staging directory belongs to the CO"
        img = driver.state_dir / "volumes" / f"{vol.volume_id}.img"
        assert not settle(lambda: loops_for_file(img)), "loop device still attached after unstage"


# -------------------------------------------------------- NodePublishVolume
class TestPublish:
    def test_missing_fields(self, csi):
        vol = csi.create("ext4")
        cap = mount_cap("ext4")
        staging = csi.stage(vol.volume_id, cap)
        target = csi.path("target")
        call = csi.node.NodePublishVolume
        for req in [
            pb.NodePublishVolumeRequest(staging_target_path=str(staging), target_path=str(target),
                                        volume_capability=cap),
            pb.NodePublishVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging),
                                        volume_capability=cap),
            pb.NodePublishVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging),
                                        target_path=str(target)),
        ]:
            assert code_of(call, req) == Code.INVALID_ARGUMENT
        assert not target.exists()

    def test_staging_path_not_set(self, csi):
        vol = csi.create("ext4")
        cap = mount_cap("ext4")
        csi.stage(vol.volume_id, cap)
        target = csi.path("target")
        assert publish_code(csi, vol.volume_id, "", target, cap) == Code.FAILED_PRECONDITION
        assert not target.exists()

    def test_publish_before_stage(self, csi):
        vol = csi.create("ext4")
        target = csi.path("target")
        assert publish_code(csi, vol.volume_id, csi.dir("staging"), target,
                            mount_cap("ext4")) == Code.FAILED_PRECONDITION
        assert not target.exists()

    def test_unknown_volume(self, csi):
        assert publish_code(csi, UNKNOWN_VOL, csi.dir("staging"), csi.path("target"),
                            mount_cap()) == Code.NOT_FOUND

    @pytest.mark.parametrize("kind", KINDS_FAST)
    def test_idempotent(self, csi, kind):
        vol = csi.create(kind)
        cap = kind_cap(kind)
        staging = csi.stage(vol.volume_id, cap)
        target = csi.publish(vol.volume_id, staging, cap)
        csi.publish(vol.volume_id, staging, cap, target)
        assert mount_count(target) == 1, "a repeated publish stacked a second mount"
        if kind == "block":
            assert stat.S_ISBLK(os.stat(target).st_mode), "block target is not the device"
        else:
            assert target.is_dir()

    def test_incompatible_republish(self, csi):
        vol = csi.create("ext4")
        cap = mount_cap("ext4")
        staging = csi.stage(vol.volume_id, cap)
        target = csi.publish(vol.volume_id, staging, cap)
        assert publish_code(csi, vol.volume_id, staging, target, cap,
                            readonly=True) == Code.ALREADY_EXISTS
        assert publish_code(csi, vol.volume_id, staging, target,
                            mount_cap("ext4", flags=["noexec"])) == Code.ALREADY_EXISTS
        assert mount_count(target) == 1

    def test_single_writer_refuses_second_target(self, csi):
        vol = csi.create("ext4", caps=[mount_cap("ext4", Mode.SINGLE_NODE_SINGLE_WRITER)])
        cap = mount_cap("ext4", Mode.SINGLE_NODE_SINGLE_WRITER)
        staging = csi.stage(vol.volume_id, cap)
        csi.publish(vol.volume_id, staging, cap)
        second = csi.path("target2")
        assert publish_code(csi, vol.volume_id, staging, second, cap) == Code.FAILED_PRECONDITION
        assert not second.exists()

    def test_multi_writer_allows_second_target(self, csi):
        cap = mount_cap("ext4", Mode.SINGLE_NODE_MULTI_WRITER)
        vol = csi.create("ext4", caps=[cap])
        staging = csi.stage(vol.volume_id, cap)
        one = csi.publish(vol.volume_id, staging, cap)
        two = csi.publish(vol.volume_id, staging, cap)
        (one / "shared").write_text("same volume")
        assert (two / "shared").read_text() == "same volume"

    def test_published_volume_cannot_be_deleted(self, csi):
        vol, staging, target = csi.ready("bind")
        assert code_of(csi.controller.DeleteVolume,
                       pb.DeleteVolumeRequest(volume_id=vol.volume_id)) == Code.FAILED_PRECONDITION

    def test_published_node_ids(self, csi, driver):
        vol, staging, target = csi.ready("ext4")
        got = csi.get_volume(vol.volume_id)
        assert list(got.status.published_node_ids) == [driver.node_id]
        csi.release(vol.volume_id, staging, target)
        assert list(csi.get_volume(vol.volume_id).status.published_node_ids) == []


# ------------------------------------------------------ NodeUnpublishVolume
class TestUnpublish:
    def test_missing_fields(self, csi):
        vol = csi.create("bind")
        call = csi.node.NodeUnpublishVolume
        assert code_of(call, pb.NodeUnpublishVolumeRequest(
            target_path=str(csi.path("t")))) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.NodeUnpublishVolumeRequest(
            volume_id=vol.volume_id)) == Code.INVALID_ARGUMENT

    def test_unknown_volume(self, csi):
        assert code_of(csi.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
            volume_id=UNKNOWN_VOL, target_path=str(csi.path("t")))) == Code.NOT_FOUND

    @pytest.mark.parametrize("kind", KINDS_FAST)
    def test_removes_target_and_is_idempotent(self, csi, kind):
        vol, staging, target = csi.ready(kind)
        csi.unpublish(vol.volume_id, target)
        assert not is_mountpoint(target)
        assert not os.path.lexists(target), "NodeUnpublish must delete the target it created"
        csi.unpublish(vol.volume_id, target)
        # still staged: the data path is intact
        if kind != "block":
            assert is_mountpoint(staging)

    def test_foreign_directory_not_removed(self, csi):
        vol = csi.create("bind")
        foreign = csi.dir("not-ours")
        csi.unpublish(vol.volume_id, foreign)
        assert foreign.is_dir(), "NodeUnpublish removed a directory it did not create"


# ------------------------------------------------- stats and node expansion
class TestStatsAndNodeExpand:
    def test_stats_errors(self, csi):
        vol, staging, target = csi.ready("ext4")
        call = csi.node.NodeGetVolumeStats
        assert code_of(call, pb.NodeGetVolumeStatsRequest(
            volume_path=str(target))) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.NodeGetVolumeStatsRequest(
            volume_id=vol.volume_id)) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.NodeGetVolumeStatsRequest(
            volume_id=UNKNOWN_VOL, volume_path=str(target))) == Code.NOT_FOUND
        assert code_of(call, pb.NodeGetVolumeStatsRequest(
            volume_id=vol.volume_id, volume_path=str(csi.dir("elsewhere")))) == Code.NOT_FOUND

    def test_stats_on_staging_path(self, csi):
        vol, staging, target = csi.ready("ext4")
        usage = {u.unit: u for u in csi.stats(vol.volume_id, staging, staging).usage}
        assert usage[pb.VolumeUsage.BYTES].total > 0
        assert usage[pb.VolumeUsage.INODES].total > 0

    def test_node_expand_errors(self, csi):
        vol, staging, target = csi.ready("ext4")
        call = csi.node.NodeExpandVolume
        rng = pb.CapacityRange(required_bytes=64 * MiB)
        assert code_of(call, pb.NodeExpandVolumeRequest(
            volume_path=str(target), capacity_range=rng)) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.NodeExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=rng)) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.NodeExpandVolumeRequest(
            volume_id=UNKNOWN_VOL, volume_path=str(target), capacity_range=rng)) == Code.NOT_FOUND
        assert code_of(call, pb.NodeExpandVolumeRequest(
            volume_id=vol.volume_id, volume_path=str(csi.dir("elsewhere")),
            capacity_range=rng)) == Code.NOT_FOUND

    def test_node_expand_idempotent(self, csi):
        vol, staging, target = csi.ready("xfs")
        csi.expand(vol.volume_id, 352 * MiB)
        first = csi.node_expand(vol.volume_id, target, 352 * MiB, staging)
        again = csi.node_expand(vol.volume_id, target, 352 * MiB, staging)
        assert first.capacity_bytes == again.capacity_bytes == 352 * MiB

    def test_node_expand_beyond_controller_size(self, csi):
        vol, staging, target = csi.ready("xfs")
        assert code_of(csi.node.NodeExpandVolume, pb.NodeExpandVolumeRequest(
            volume_id=vol.volume_id, volume_path=str(target), staging_target_path=str(staging),
            capacity_range=pb.CapacityRange(required_bytes=1024 * MiB))) == Code.OUT_OF_RANGE

    def test_ext4_expansion_while_published(self, csi):
        """With CAP_SYS_RESOURCE a published ext4 grows online; without it the
        driver says FAILED_PRECONDITION (spec: "Volume in use") and grows it
        once no pod has it published, through the staged path."""
        vol, staging, target = csi.ready("ext4", size=32 * MiB)
        before = os.statvfs(target).f_blocks * os.statvfs(target).f_frsize
        csi.expand(vol.volume_id, 64 * MiB)
        code = code_of(csi.node.NodeExpandVolume, pb.NodeExpandVolumeRequest(
            volume_id=vol.volume_id, volume_path=str(target), staging_target_path=str(staging),
            capacity_range=pb.CapacityRange(required_bytes=64 * MiB)))
        if EXT4_ONLINE_GROW:
            assert code == Code.OK
        else:
            assert code == Code.FAILED_PRECONDITION
            assert mount_count(target) == 1, "the refused expansion disturbed the publication"
            csi.unpublish(vol.volume_id, target)
            csi.node_expand(vol.volume_id, staging, 64 * MiB, staging)
            target = csi.publish(vol.volume_id, staging, kind_cap("ext4"))
        after = os.statvfs(target).f_blocks * os.statvfs(target).f_frsize
        assert after >= before + 24 * MiB


# ------------------------------------------- NOT_FOUND whatever the path (issue 12)
class TestNotFoundWhateverThePath:
    def test_unknown_volume_any_path(self, csi):
        rng = pb.CapacityRange(required_bytes=64 * MiB)
        cap = mount_cap()
        for path in ["some/path", "/", "/x/../y", "rel\x00ative", str(csi.dir("real"))]:
            calls = [
                (csi.node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
                    volume_id=UNKNOWN_VOL, volume_path=path)),
                (csi.node.NodeExpandVolume, pb.NodeExpandVolumeRequest(
                    volume_id=UNKNOWN_VOL, volume_path=path, capacity_range=rng)),
                (csi.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
                    volume_id=UNKNOWN_VOL, target_path=path)),
                (csi.node.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
                    volume_id=UNKNOWN_VOL, staging_target_path=path)),
                (csi.node.NodeStageVolume, csi.stage_request(UNKNOWN_VOL, path, cap)),
                (csi.node.NodePublishVolume, csi.publish_request(UNKNOWN_VOL, path, path, cap)),
            ]
            for call, request in calls:
                assert code_of(call, request) == Code.NOT_FOUND, (type(request).__name__, path)

    @pytest.mark.parametrize("kind", ["bind", "ext4", "block"])
    def test_known_volume_elsewhere(self, csi, kind):
        vol, staging, target = csi.ready(kind)
        rng = pb.CapacityRange(required_bytes=KINDS[kind]["size"])
        for path in ["some/path", "some", f"{target}/", f"{target}/..", f"{staging}x",
                     str(csi.dir("elsewhere"))]:
            assert code_of(csi.node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
                volume_id=vol.volume_id, volume_path=path)) == Code.NOT_FOUND, path
            assert code_of(csi.node.NodeExpandVolume, pb.NodeExpandVolumeRequest(
                volume_id=vol.volume_id, volume_path=path, capacity_range=rng)) == Code.NOT_FOUND, path
        # the real paths still answer
        assert csi.stats(vol.volume_id, target).usage


class TestUnmountBeforeForgetting:
    """NodeUnstage and NodeUnpublish forget their record only after the
    unmount succeeded: while it fails (a file held open), every retry fails
    too, and the mount stays until one succeeds."""

    def test_unstage_retried_while_busy(self, csi):
        vol = csi.create("ext4")
        cap = kind_cap("ext4")
        staging = csi.stage(vol.volume_id, cap)
        request = pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id,
                                              staging_target_path=str(staging))
        with open(staging / "held", "w"):
            for _ in range(2):
                assert code_of(csi.node.NodeUnstageVolume, request) != Code.OK
                assert is_mountpoint(staging)
        csi.unstage(vol.volume_id, staging)
        assert not is_mountpoint(staging)

    @pytest.mark.parametrize("kind", ["bind", "ext4"])
    def test_unpublish_retried_while_busy(self, csi, kind):
        vol, staging, target = csi.ready(kind)
        request = pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(target))
        with open(target / "held", "w"):
            for _ in range(2):
                assert code_of(csi.node.NodeUnpublishVolume, request) != Code.OK
                assert is_mountpoint(target)
        csi.unpublish(vol.volume_id, target)
        assert not is_mountpoint(target)
