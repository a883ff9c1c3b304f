"""Smoke: the spec's error codes for the mistakes a CO (or an attacker) makes."""

import os

import grpc
import pytest

from csi.launcher import temporary_driver
from csi.v1 import csi_pb2 as pb

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts and loop devices")

MiB = 1 << 20
MODE = pb.VolumeCapability.AccessMode
Code = grpc.StatusCode


def cap(mode=MODE.SINGLE_NODE_WRITER, block=False):
    if block:
        return pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(),
                                   access_mode=MODE(mode=mode))
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(), access_mode=MODE(mode=mode))


def code(call, request):
    try:
        call(request)
    except grpc.RpcError as e:
        return e.code()
    return Code.OK


@pytest.fixture(scope="module")
def drv():
    with temporary_driver(prefix="podplumb-csi-smoke-", args=["--capacity", "1G"]) as d:
        yield d


def create_request(name, size=16 * MiB, limit=0, caps=None, **params):
    return pb.CreateVolumeRequest(name=name, volume_capabilities=caps or [cap()], parameters=params,
                                  capacity_range=pb.CapacityRange(required_bytes=size,
                                                                  limit_bytes=limit))


def test_create_volume_errors(drv):
    c = drv.controller
    assert code(c.CreateVolume, pb.CreateVolumeRequest(volume_capabilities=[cap()])) \
        == Code.INVALID_ARGUMENT                                          # no name
    assert code(c.CreateVolume, create_request("multi", caps=[cap(MODE.MULTI_NODE_MULTI_WRITER)])) \
        == Code.INVALID_ARGUMENT
    assert code(c.CreateVolume, create_request("bad", colour="blue")) == Code.INVALID_ARGUMENT
    assert code(c.CreateVolume, create_request("huge", size=2 << 30)) == Code.RESOURCE_EXHAUSTED
    assert code(c.CreateVolume, create_request("xfs-small", limit=64 * MiB, kind="loop",
                caps=[pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type="xfs"),
                                          access_mode=MODE(mode=1))])) == Code.OUT_OF_RANGE
    vol = c.CreateVolume(create_request("same")).volume
    assert c.CreateVolume(create_request("same")).volume.volume_id == vol.volume_id
    assert code(c.CreateVolume, create_request("same", size=32 * MiB)) == Code.ALREADY_EXISTS
    assert code(c.CreateVolume, create_request("same", kind="loop")) == Code.ALREADY_EXISTS
    c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))


def test_unknown_and_malformed_ids(drv):
    c, n = drv.controller, drv.node
    for vid in ("vol-" + "0" * 32, "../../etc", "vol-../x"):
        assert code(c.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vid)) == Code.OK
        assert code(c.ControllerGetVolume, pb.ControllerGetVolumeRequest(volume_id=vid)) \
            == Code.NOT_FOUND
        assert code(n.NodeStageVolume, pb.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path="/tmp/x", volume_capability=cap())) == Code.NOT_FOUND
    assert code(c.DeleteSnapshot, pb.DeleteSnapshotRequest(snapshot_id="snap-x")) == Code.OK
    assert code(c.GetSnapshot, pb.GetSnapshotRequest(snapshot_id="snap-x")) == Code.NOT_FOUND


def test_validate_and_pagination(drv):
    c = drv.controller
    vols = [c.CreateVolume(create_request(f"page-{i}")).volume.volume_id for i in range(3)]
    try:
        ok = c.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
            volume_id=vols[0], volume_capabilities=[cap()]))
        assert ok.HasField("confirmed")
        refused = c.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
            volume_id=vols[0], volume_capabilities=[cap(MODE.MULTI_NODE_READER_ONLY)]))
        assert not refused.HasField("confirmed") and refused.message
        seen, token = [], ""
        while True:
            page = c.ListVolumes(pb.ListVolumesRequest(max_entries=2, starting_token=token))
            assert len(page.entries) <= 2
            seen += [e.volume.volume_id for e in page.entries]
            token = page.next_token
            if not token:
                break
        assert sorted(seen) == sorted(vols)
        assert code(c.ListVolumes, pb.ListVolumesRequest(starting_token="bogus")) == Code.ABORTED
    finally:
        for vid in vols:
            c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))


def test_hostile_paths(drv):
    vol = drv.controller.CreateVolume(create_request("paths")).volume.volume_id
    link = os.path.join(drv.root, "link-to-etc")
    os.symlink("/etc", link)
    try:
        for path in ("relative", "/", drv.root + "/a/../../etc", drv.root + "/a\x00b",
                     link, link + "/escape"):
            assert code(drv.node.NodeStageVolume, pb.NodeStageVolumeRequest(
                volume_id=vol, staging_target_path=path, volume_capability=cap())) \
                == Code.INVALID_ARGUMENT, path
        assert not os.path.exists("/etc/escape")
    finally:
        os.unlink(link)
        drv.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol))


def test_publish_conflicts(drv):
    vol = drv.controller.CreateVolume(create_request("conflicts")).volume.volume_id
    staging = os.path.join(drv.root, "conflicts-staging")
    target = os.path.join(drv.root, "conflicts-target")
    os.makedirs(staging)
    publish = pb.NodePublishVolumeRequest(volume_id=vol, staging_target_path=staging,
                                          target_path=target, volume_capability=cap())
    assert code(drv.node.NodePublishVolume, publish) == Code.FAILED_PRECONDITION   # not staged
    drv.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vol, staging_target_path=staging, volume_capability=cap()))
    drv.node.NodePublishVolume(publish)
    publish.readonly = True
    assert code(drv.node.NodePublishVolume, publish) == Code.ALREADY_EXISTS
    assert code(drv.controller.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vol)) \
        == Code.FAILED_PRECONDITION
    assert code(drv.node.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
        volume_id=vol, staging_target_path=staging)) == Code.FAILED_PRECONDITION
    drv.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vol, target_path=target))
    drv.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=vol, staging_target_path=staging))
    drv.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol))


def test_busy_volume_is_aborted():
    from csi.errors import Aborted, Busy
    busy = Busy()
    with busy.hold("vol-a"):
        with pytest.raises(Aborted):
            busy.hold("vol-a")
        with busy.hold("vol-b"):
            pass
    with busy.hold("vol-a"):
        pass
