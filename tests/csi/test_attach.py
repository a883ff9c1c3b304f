"""ControllerPublishVolume / ControllerUnpublishVolume with --enable-attach."""

import pytest

from .conftest import (Code, Driver, Mode, _csi_session, code_of, dispose_root, kind_cap,
                       mount_cap, new_root, pb)


@pytest.fixture(scope="module")
def attach_driver():
    root = new_root()
    drv = Driver(root, extra_args=["--enable-attach", "--max-volumes", "3"]).start()
    yield drv
    assert not dispose_root(root, drv)


@pytest.fixture
def csi_attach(attach_driver, request):
    yield from _csi_session(attach_driver, request)


def publish_request(volume_id, node_id="node-test", cap=None, readonly=False):
    return pb.ControllerPublishVolumeRequest(volume_id=volume_id, node_id=node_id,
                                             volume_capability=cap or kind_cap("bind"),
                                             readonly=readonly)


def published_nodes(csi, volume_id):
    return list(csi.get_volume(volume_id).status.published_node_ids)


def test_capabilities(csi_attach):
    caps = {c.rpc.type for c in csi_attach.controller.ControllerGetCapabilities(
        pb.ControllerGetCapabilitiesRequest()).capabilities}
    RPC = pb.ControllerServiceCapability.RPC
    assert {RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.PUBLISH_READONLY} <= caps


def test_publish_records_node_idempotent_and_unpublish(csi_attach):
    csi = csi_attach
    vol = csi.create("bind")
    ctl = csi.controller
    ctl.ControllerPublishVolume(publish_request(vol.volume_id))
    ctl.ControllerPublishVolume(publish_request(vol.volume_id))            # idempotent
    assert published_nodes(csi, vol.volume_id) == ["node-test"]
    listed = {e.volume.volume_id: e for e in csi.list_all_volumes()}
    assert list(listed[vol.volume_id].status.published_node_ids) == ["node-test"]
    assert code_of(ctl.ControllerPublishVolume, publish_request(
        vol.volume_id, readonly=True)) == Code.ALREADY_EXISTS
    assert code_of(ctl.DeleteVolume, pb.DeleteVolumeRequest(
        volume_id=vol.volume_id)) == Code.FAILED_PRECONDITION
    # the node side works as before
    staging = csi.stage(vol.volume_id, kind_cap("bind"))
    target = csi.publish(vol.volume_id, staging, kind_cap("bind"))
    csi.release(vol.volume_id, staging, target)
    ctl.ControllerUnpublishVolume(pb.ControllerUnpublishVolumeRequest(
        volume_id=vol.volume_id, node_id="node-test"))
    ctl.ControllerUnpublishVolume(pb.ControllerUnpublishVolumeRequest(
        volume_id=vol.volume_id, node_id="node-test"))                       # idempotent
    assert published_nodes(csi, vol.volume_id) == []
    ctl.ControllerPublishVolume(publish_request(vol.volume_id))
    ctl.ControllerUnpublishVolume(pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id))
    assert published_nodes(csi, vol.volume_id) == []


def test_publish_errors(csi_attach):
    csi = csi_attach
    vol = csi.create("bind")
    ctl = csi.controller
    call = ctl.ControllerPublishVolume
    assert code_of(call, publish_request("vol-" + "0" * 32)) == Code.NOT_FOUND
    assert code_of(call, publish_request(vol.volume_id, node_id="other-node")) == Code.NOT_FOUND
    assert code_of(call, pb.ControllerPublishVolumeRequest(
        node_id="node-test", volume_capability=kind_cap("bind"))) == Code.INVALID_ARGUMENT
    assert code_of(call, pb.ControllerPublishVolumeRequest(
        volume_id=vol.volume_id, volume_capability=kind_cap("bind"))) == Code.INVALID_ARGUMENT
    assert code_of(call, pb.ControllerPublishVolumeRequest(
        volume_id=vol.volume_id, node_id="node-test")) == Code.INVALID_ARGUMENT
    assert code_of(call, publish_request(vol.volume_id, cap=mount_cap(
        mode=Mode.MULTI_NODE_MULTI_WRITER))) == Code.INVALID_ARGUMENT
    assert published_nodes(csi, vol.volume_id) == []
    # unpublish of what is not published (or gone) is fine
    for vid, node in [(vol.volume_id, "other-node"), ("vol-" + "0" * 32, "node-test")]:
        ctl.ControllerUnpublishVolume(pb.ControllerUnpublishVolumeRequest(
            volume_id=vid, node_id=node))
    assert code_of(ctl.ControllerUnpublishVolume,
                   pb.ControllerUnpublishVolumeRequest(node_id="node-test")) == Code.INVALID_ARGUMENT


def test_max_volumes_per_node(csi_attach):
    csi = csi_attach
    vols = [csi.create("bind") for _ in range(4)]
    for vol in vols[:3]:
        csi.controller.ControllerPublishVolume(publish_request(vol.volume_id))
    assert code_of(csi.controller.ControllerPublishVolume,
                   publish_request(vols[3].volume_id)) == Code.RESOURCE_EXHAUSTED
    for vol in vols[:3]:
        csi.controller.ControllerUnpublishVolume(pb.ControllerUnpublishVolumeRequest(
            volume_id=vol.volume_id, node_id="node-test"))


def test_without_the_flag_unimplemented(csi):
    vol = csi.create("bind")
    assert code_of(csi.controller.ControllerPublishVolume,
                   publish_request(vol.volume_id)) == Code.UNIMPLEMENTED
    assert code_of(csi.controller.ControllerUnpublishVolume, pb.ControllerUnpublishVolumeRequest(
        volume_id=vol.volume_id, node_id="node-test")) == Code.UNIMPLEMENTED
