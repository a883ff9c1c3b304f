"""Controller service: the spec's error tables and idempotency rules, RPC by
RPC, plus the contract's sizing and naming rules (docs/csi-contract.md)."""

import pytest

from .conftest import CAPACITY, TOPOLOGY_KEY, Code, MiB, Mode, block_cap, code_of, kind_cap, mount_cap, pb, rpc_error

MULTI_NODE = [Mode.MULTI_NODE_READER_ONLY, Mode.MULTI_NODE_SINGLE_WRITER,
              Mode.MULTI_NODE_MULTI_WRITER]
UNKNOWN_VOL = "vol-" + "0" * 32
UNKNOWN_SNAP = "snap-" + "0" * 32


def create_code(csi, kind="ext4", **kw):
    return code_of(csi.controller.CreateVolume, csi.create_request(kind, **kw))


# ------------------------------------------------------------ CreateVolume
class TestCreateVolumeErrors:
    def test_missing_name(self, csi):
        assert create_code(csi, name="") == Code.INVALID_ARGUMENT

    def test_missing_capabilities(self, csi):
        assert create_code(csi, caps=[]) == Code.INVALID_ARGUMENT

    def test_capability_without_access_type(self, csi):
        cap = pb.VolumeCapability(access_mode=pb.VolumeCapability.AccessMode(
            mode=Mode.SINGLE_NODE_WRITER))
        assert create_code(csi, caps=[cap]) == Code.INVALID_ARGUMENT

    def test_capability_without_access_mode(self, csi):
        cap = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume())
        assert create_code(csi, caps=[cap]) == Code.INVALID_ARGUMENT

    @pytest.mark.parametrize("mode", MULTI_NODE, ids=lambda m: Mode.Name(m))
    @pytest.mark.parametrize("kind", ["bind", "ext4", "block"])
    def test_multi_node_refused(self, csi, kind, mode):
        assert create_code(csi, kind, caps=[kind_cap(kind, mode)]) == Code.INVALID_ARGUMENT

    def test_multi_node_among_several_capabilities(self, csi):
        caps = [mount_cap("ext4"), mount_cap("ext4", Mode.MULTI_NODE_MULTI_WRITER)]
        assert create_code(csi, caps=caps) == Code.INVALID_ARGUMENT

    @pytest.mark.parametrize("params", [
        {"kind": "nfs"}, {"kind": "LOOP"}, {"colour": "blue"}, {"kind": "loop", "size": "1"}])
    def test_bad_parameters(self, csi, params):
        assert create_code(csi, params=params) == Code.INVALID_ARGUMENT

    def test_provisioner_metadata_parameters_ignored(self, csi):
        params = {"kind": "bind", "csi.storage.k8s.io/pvc/name": "data",
                  "csi.storage.k8s.io/pvc/namespace": "default",
                  "csi.storage.k8s.io/pv/name": "pvc-123"}
        vol = csi.create("bind", params=params)
        assert vol.volume_context["kind"] == "bind"

    def test_bind_with_block_capability(self, csi):
        assert create_code(csi, "bind", caps=[block_cap()]) == Code.INVALID_ARGUMENT

    def test_unsupported_fs_type(self, csi):
        assert create_code(csi, caps=[mount_cap("btrfs")]) == Code.INVALID_ARGUMENT

    def test_disagreeing_fs_types(self, csi):
        assert create_code(csi, caps=[mount_cap("ext4"), mount_cap("xfs")]) == Code.INVALID_ARGUMENT

    def test_limit_below_required(self, csi):
        assert create_code(csi, size=32 * MiB, limit=16 * MiB) == Code.INVALID_ARGUMENT

    def test_negative_sizes(self, csi):
        assert create_code(csi, size=-1) == Code.INVALID_ARGUMENT
        assert create_code(csi, size=0, limit=-MiB) == Code.INVALID_ARGUMENT

    def test_rounding_past_limit_is_out_of_range(self, csi):
        # 16 MiB + 1 byte rounds up to 17 MiB, above the limit
        assert create_code(csi, size=16 * MiB + 1, limit=16 * MiB + 1) == Code.OUT_OF_RANGE

    def test_xfs_minimum_above_limit_is_out_of_range(self, csi):
        assert create_code(csi, "xfs", size=64 * MiB, limit=100 * MiB) == Code.OUT_OF_RANGE

    @pytest.mark.parametrize("size", [2 ** 62, 2 ** 63 - 1, CAPACITY + MiB])
    @pytest.mark.parametrize("kind", ["bind", "ext4"])
    def test_beyond_capacity(self, csi, driver, kind, size):
        before = set(p.name for p in (driver.state_dir / "volumes").glob("*")) \
            if (driver.state_dir / "volumes").exists() else set()
        assert create_code(csi, kind, size=size) == Code.RESOURCE_EXHAUSTED
        after = set(p.name for p in (driver.state_dir / "volumes").glob("*")) \
            if (driver.state_dir / "volumes").exists() else set()
        assert after == before, "a refused volume left files behind"

    def test_foreign_requisite_topology(self, csi):
        req = pb.TopologyRequirement(requisite=[pb.Topology(segments={TOPOLOGY_KEY: "other-node"})])
        assert create_code(csi, "bind", accessibility_requirements=req) == Code.RESOURCE_EXHAUSTED

    def test_requisite_topology_including_ours(self, csi, driver):
        req = pb.TopologyRequirement(
            requisite=[pb.Topology(segments={TOPOLOGY_KEY: "other-node"}),
                       pb.Topology(segments={TOPOLOGY_KEY: driver.node_id})],
            preferred=[pb.Topology(segments={TOPOLOGY_KEY: "other-node"})])
        vol = csi.create("bind", accessibility_requirements=req)
        assert dict(vol.accessible_topology[0].segments) == {TOPOLOGY_KEY: driver.node_id}

    def test_unknown_snapshot_source(self, csi):
        src = pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(
            snapshot_id=UNKNOWN_SNAP))
        assert create_code(csi, source=src) == Code.NOT_FOUND

    def test_unknown_volume_source(self, csi):
        src = pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(
            volume_id=UNKNOWN_VOL))
        assert create_code(csi, source=src) == Code.NOT_FOUND

    def test_source_larger_than_limit(self, csi):
        vol = csi.create("ext4", size=48 * MiB)
        snap = csi.snapshot(vol.volume_id)
        src = pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(
            snapshot_id=snap.snapshot_id))
        assert create_code(csi, size=16 * MiB, limit=32 * MiB, source=src) == Code.OUT_OF_RANGE

    def test_source_of_another_kind(self, csi):
        vol = csi.create("bind")
        src = pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(
            volume_id=vol.volume_id))
        assert create_code(csi, "ext4", source=src) == Code.INVALID_ARGUMENT


class TestCreateVolumeResults:
    def test_loop_sizes_round_up_to_mib(self, csi):
        vol = csi.create("ext4", size=20 * MiB + 1)
        assert vol.capacity_bytes == 21 * MiB

    def test_loop_default_size_from_limit(self, csi):
        vol = csi.create("ext4", size=0, limit=40 * MiB + 5)
        assert vol.capacity_bytes == 40 * MiB

    def test_xfs_raised_to_minimum(self, csi):
        vol = csi.create("xfs", size=64 * MiB, limit=0)
        assert vol.capacity_bytes == 300 * MiB

    def test_bind_capacity_accounted(self, csi):
        vol = csi.create("bind", size=10 * MiB + 1)
        assert vol.capacity_bytes == 11 * MiB

    @pytest.mark.parametrize("kind,context", [
        ("bind", {"kind": "bind"}), ("ext4", {"kind": "loop", "fsType": "ext4"}),
        ("block", {"kind": "loop", "fsType": ""})])
    def test_volume_context(self, csi, kind, context):
        vol = csi.create(kind)
        assert vol.volume_id.startswith("vol-") and len(vol.volume_id) == 36
        got = dict(vol.volume_context)
        assert {k: got.get(k, "") for k in context} == context

    def test_default_kind_is_bind_for_mount_and_loop_for_block(self, csi):
        fs = csi.create("bind", params={})
        blk = csi.create("block", params={})
        assert fs.volume_context["kind"] == "bind"
        assert blk.volume_context["kind"] == "loop"


class TestCreateVolumeIdempotency:
    @pytest.mark.parametrize("kind", ["bind", "ext4", "block"])
    def test_same_request_same_volume(self, csi, kind):
        req = csi.create_request(kind)
        first = csi.create(request=req)
        second = csi.create(request=req)
        assert second == first

    def test_compatible_smaller_request_returns_existing(self, csi):
        name = csi.name()
        first = csi.create("ext4", name=name, size=32 * MiB)
        again = csi.create("ext4", name=name, size=16 * MiB, limit=64 * MiB)
        assert again.volume_id == first.volume_id and again.capacity_bytes == 32 * MiB

    @pytest.mark.parametrize("change", [
        dict(size=64 * MiB),                        # existing size too small
        dict(size=8 * MiB, limit=16 * MiB),        # existing size above the new limit
        dict(params={"kind": "bind"}, caps=[mount_cap()]),
        dict(caps=[mount_cap("xfs")]),
    ], ids=["bigger", "limit", "kind", "fstype"])
    def test_incompatible_request(self, csi, change):
        name = csi.name()
        csi.create("ext4", name=name, size=32 * MiB)
        request = dict(size=32 * MiB) | change
        assert create_code(csi, "ext4", name=name, **request) == Code.ALREADY_EXISTS

    def test_different_source(self, csi):
        vol = csi.create("ext4")
        name = csi.name()
        csi.create("ext4", name=name)
        src = pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(
            volume_id=vol.volume_id))
        assert create_code(csi, "ext4", name=name, source=src) == Code.ALREADY_EXISTS


# ------------------------------------------------------------ DeleteVolume
class TestDeleteVolume:
    def test_missing_id(self, csi):
        assert code_of(csi.controller.DeleteVolume, pb.DeleteVolumeRequest()) == Code.INVALID_ARGUMENT

    @pytest.mark.parametrize("volume_id", [UNKNOWN_VOL, "vol-nothex", "x"])
    def test_unknown_is_ok(self, csi, volume_id):
        csi.delete(volume_id)

    @pytest.mark.parametrize("kind", ["bind", "ext4", "block"])
    def test_twice(self, csi, driver, kind):
        vol = csi.create(kind)
        csi.delete(vol.volume_id)
        csi.delete(vol.volume_id)
        assert code_of(csi.controller.ControllerGetVolume,
                       pb.ControllerGetVolumeRequest(volume_id=vol.volume_id)) == Code.NOT_FOUND
        leftovers = [p for p in (driver.state_dir / "volumes").iterdir()
                     if p.name.startswith(vol.volume_id)]
        assert not leftovers

    def test_volume_with_snapshot_can_be_deleted(self, csi):
        vol = csi.create("ext4")
        snap = csi.snapshot(vol.volume_id)
        csi.delete(vol.volume_id)
        listed = csi.list_all_snapshots(snapshot_id=snap.snapshot_id)
        assert [e.snapshot.snapshot_id for e in listed] == [snap.snapshot_id]


# ----------------------------------------------- ValidateVolumeCapabilities
class TestValidateVolumeCapabilities:
    def test_missing_fields(self, csi):
        vol = csi.create("bind")
        call = csi.controller.ValidateVolumeCapabilities
        assert code_of(call, pb.ValidateVolumeCapabilitiesRequest(
            volume_capabilities=[mount_cap()])) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.ValidateVolumeCapabilitiesRequest(
            volume_id=vol.volume_id)) == Code.INVALID_ARGUMENT

    def test_unknown_volume(self, csi):
        assert code_of(csi.controller.ValidateVolumeCapabilities,
                       pb.ValidateVolumeCapabilitiesRequest(
                           volume_id=UNKNOWN_VOL, volume_capabilities=[mount_cap()])) == Code.NOT_FOUND

    @pytest.mark.parametrize("kind", ["bind", "ext4", "block"])
    def test_confirms_own_capabilities(self, csi, kind):
        vol = csi.create(kind)
        caps = [kind_cap(kind), kind_cap(kind, Mode.SINGLE_NODE_READER_ONLY)]
        resp = csi.controller.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
            volume_id=vol.volume_id, volume_capabilities=caps))
        assert list(resp.confirmed.volume_capabilities) == caps

    @pytest.mark.parametrize("mode", MULTI_NODE, ids=lambda m: Mode.Name(m))
    def test_multi_node_not_confirmed(self, csi, mode):
        vol = csi.create("ext4")
        resp = csi.controller.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
            volume_id=vol.volume_id, volume_capabilities=[mount_cap("ext4", mode)]))
        assert not resp.HasField("confirmed") and resp.message

    def test_bind_volume_has_no_block_access(self, csi):
        vol = csi.create("bind")
        resp = csi.controller.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
            volume_id=vol.volume_id, volume_capabilities=[block_cap()]))
        assert not resp.HasField("confirmed") and resp.message


# ------------------------------------------------- ListVolumes / GetVolume
class TestListAndGet:
    def test_bad_starting_token(self, csi):
        csi.create("bind")
        for token in ["garbage", "snap-" + "f" * 32, "\u2603", "vol-../x"]:
            assert code_of(csi.controller.ListVolumes,
                           pb.ListVolumesRequest(starting_token=token)) == Code.ABORTED

    def test_negative_max_entries(self, csi):
        assert code_of(csi.controller.ListVolumes,
                       pb.ListVolumesRequest(max_entries=-1)) == Code.INVALID_ARGUMENT
        assert code_of(csi.controller.ListSnapshots,
                       pb.ListSnapshotsRequest(max_entries=-1)) == Code.INVALID_ARGUMENT

    def test_get_volume_errors(self, csi):
        call = csi.controller.ControllerGetVolume
        assert code_of(call, pb.ControllerGetVolumeRequest()) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.ControllerGetVolumeRequest(volume_id=UNKNOWN_VOL)) == Code.NOT_FOUND
        assert code_of(call, pb.ControllerGetVolumeRequest(volume_id="nope")) == Code.NOT_FOUND

    def test_get_volume_describes_volume(self, csi):
        vol = csi.create("ext4")
        got = csi.get_volume(vol.volume_id)
        assert got.volume == vol
        assert not got.status.volume_condition.abnormal
        assert list(got.status.published_node_ids) == []


# ------------------------------------------------------------- GetCapacity
class TestGetCapacity:
    def test_foreign_topology_has_no_capacity(self, csi):
        assert csi.capacity(accessible_topology=pb.Topology(
            segments={TOPOLOGY_KEY: "other-node"})) == 0

    def test_multi_node_capability_has_no_capacity(self, csi):
        assert csi.capacity(volume_capabilities=[
            mount_cap("ext4", Mode.MULTI_NODE_MULTI_WRITER)]) == 0

    def test_own_topology_and_max_size(self, csi, driver):
        resp = csi.controller.GetCapacity(pb.GetCapacityRequest(
            accessible_topology=pb.Topology(segments={TOPOLOGY_KEY: driver.node_id})))
        assert 0 < resp.available_capacity <= CAPACITY
        assert resp.maximum_volume_size.value == resp.available_capacity


# --------------------------------------------------------------- snapshots
class TestSnapshots:
    def test_missing_fields(self, csi):
        vol = csi.create("bind")
        call = csi.controller.CreateSnapshot
        assert code_of(call, pb.CreateSnapshotRequest(
            source_volume_id=vol.volume_id)) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.CreateSnapshotRequest(name=csi.name())) == Code.INVALID_ARGUMENT
        assert code_of(csi.controller.DeleteSnapshot,
                       pb.DeleteSnapshotRequest()) == Code.INVALID_ARGUMENT
        assert code_of(csi.controller.GetSnapshot,
                       pb.GetSnapshotRequest()) == Code.INVALID_ARGUMENT

    def test_unknown_source(self, csi):
        assert code_of(csi.controller.CreateSnapshot, pb.CreateSnapshotRequest(
            name=csi.name(), source_volume_id=UNKNOWN_VOL)) == Code.NOT_FOUND

    @pytest.mark.parametrize("kind", ["bind", "ext4", "block"])
    def test_idempotent_create(self, csi, kind):
        vol = csi.create(kind)
        name = csi.name("snap")
        first = csi.snapshot(vol.volume_id, name)
        again = csi.snapshot(vol.volume_id, name)
        assert again.snapshot_id == first.snapshot_id
        assert first.snapshot_id.startswith("snap-") and len(first.snapshot_id) == 37
        assert first.source_volume_id == vol.volume_id
        assert first.ready_to_use and first.creation_time.seconds > 0
        assert first.size_bytes >= 0

    def test_same_name_other_source(self, csi):
        a, b = csi.create("bind"), csi.create("bind")
        name = csi.name("snap")
        csi.snapshot(a.volume_id, name)
        assert code_of(csi.controller.CreateSnapshot, pb.CreateSnapshotRequest(
            name=name, source_volume_id=b.volume_id)) == Code.ALREADY_EXISTS

    def test_delete_unknown_and_twice(self, csi):
        csi.delete_snapshot(UNKNOWN_SNAP)
        csi.delete_snapshot("snap-../../x")
        vol = csi.create("bind")
        snap = csi.snapshot(vol.volume_id)
        csi.delete_snapshot(snap.snapshot_id)
        csi.delete_snapshot(snap.snapshot_id)
        assert code_of(csi.controller.GetSnapshot,
                       pb.GetSnapshotRequest(snapshot_id=snap.snapshot_id)) == Code.NOT_FOUND

    def test_get_snapshot(self, csi):
        vol = csi.create("ext4")
        snap = csi.snapshot(vol.volume_id)
        got = csi.controller.GetSnapshot(pb.GetSnapshotRequest(snapshot_id=snap.snapshot_id))
        assert got.snapshot == snap
        assert code_of(csi.controller.GetSnapshot,
                       pb.GetSnapshotRequest(snapshot_id=UNKNOWN_SNAP)) == Code.NOT_FOUND

    def test_list_filters(self, csi):
        a, b = csi.create("bind"), csi.create("bind")
        sa, sb = csi.snapshot(a.volume_id), csi.snapshot(b.volume_id)
        by_source = csi.list_all_snapshots(source_volume_id=a.volume_id)
        assert [e.snapshot.snapshot_id for e in by_source] == [sa.snapshot_id]
        by_id = csi.list_all_snapshots(snapshot_id=sb.snapshot_id)
        assert [e.snapshot for e in by_id] == [sb]
        assert csi.list_all_snapshots(snapshot_id=UNKNOWN_SNAP) == []
        assert csi.list_all_snapshots(snapshot_id="junk") == []
        assert csi.list_all_snapshots(source_volume_id=UNKNOWN_VOL) == []

    def test_bad_starting_token(self, csi):
        assert code_of(csi.controller.ListSnapshots,
                       pb.ListSnapshotsRequest(starting_token="garbage")) == Code.ABORTED


# ---------------------------------------------------------------- expansion
class TestControllerExpand:
    def test_missing_fields(self, csi):
        vol = csi.create("ext4")
        call = csi.controller.ControllerExpandVolume
        assert code_of(call, pb.ControllerExpandVolumeRequest(
            capacity_range=pb.CapacityRange(required_bytes=64 * MiB))) == Code.INVALID_ARGUMENT
        assert code_of(call, pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id)) == Code.INVALID_ARGUMENT

    def test_unknown_volume(self, csi):
        assert code_of(csi.controller.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
            volume_id=UNKNOWN_VOL,
            capacity_range=pb.CapacityRange(required_bytes=64 * MiB))) == Code.NOT_FOUND

    @pytest.mark.parametrize("kind", ["bind", "ext4", "block"])
    def test_idempotent_and_never_shrinks(self, csi, kind):
        vol = csi.create(kind, size=32 * MiB)
        grown = csi.expand(vol.volume_id, 40 * MiB)
        assert grown.capacity_bytes == 40 * MiB
        assert grown.node_expansion_required == (kind == "ext4")
        assert csi.expand(vol.volume_id, 40 * MiB).capacity_bytes == 40 * MiB
        assert csi.expand(vol.volume_id, 16 * MiB).capacity_bytes == 40 * MiB
        assert csi.get_volume(vol.volume_id).volume.capacity_bytes == 40 * MiB

    def test_too_large(self, csi, driver):
        vol = csi.create("ext4", size=32 * MiB)
        code = code_of(csi.controller.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=2 ** 62)))
        assert code in (Code.OUT_OF_RANGE, Code.RESOURCE_EXHAUSTED)
        assert csi.get_volume(vol.volume_id).volume.capacity_bytes == 32 * MiB
        img = driver.state_dir / "volumes" / f"{vol.volume_id}.img"
        assert img.stat().st_size == 32 * MiB

    def test_limit_below_required(self, csi):
        vol = csi.create("ext4", size=32 * MiB)
        assert code_of(csi.controller.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=pb.CapacityRange(
                required_bytes=64 * MiB, limit_bytes=48 * MiB))) == Code.INVALID_ARGUMENT


# ------------------------------------------------------- not offered RPCs
def test_controller_publish_not_implemented(csi):
    vol = csi.create("bind")
    err = rpc_error(csi.controller.ControllerPublishVolume, pb.ControllerPublishVolumeRequest(
        volume_id=vol.volume_id, node_id="node-test", volume_capability=mount_cap()))
    assert err.code() == Code.UNIMPLEMENTED
    err = rpc_error(csi.controller.ControllerUnpublishVolume, pb.ControllerUnpublishVolumeRequest(
        volume_id=vol.volume_id, node_id="node-test"))
    assert err.code() == Code.UNIMPLEMENTED
