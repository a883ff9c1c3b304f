"""Identity service and the capabilities the driver declares (spec: Identity
Service RPC, ControllerGetCapabilities, NodeGetCapabilities, NodeGetInfo)."""

from .conftest import TOPOLOGY_KEY, pb

CtrlCap = pb.ControllerServiceCapability.RPC.Type
NodeCap = pb.NodeServiceCapability.RPC.Type


def test_plugin_info(csi):
    info = csi.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == "podplumb.csi.io"
    assert info.vendor_version  # REQUIRED by the spec


def test_plugin_capabilities(csi):
    caps = csi.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    services = {c.service.type for c in caps if c.HasField("service")}
    expansion = {c.volume_expansion.type for c in caps if c.HasField("volume_expansion")}
    assert pb.PluginCapability.Service.CONTROLLER_SERVICE in services
    assert pb.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS in services
    assert pb.PluginCapability.Service.GROUP_CONTROLLER_SERVICE in services
    assert pb.PluginCapability.VolumeExpansion.ONLINE in expansion


def test_probe_ready(csi):
    resp = csi.identity.Probe(pb.ProbeRequest())
    assert not resp.HasField("ready") or resp.ready.value


def test_controller_capabilities(csi):
    caps = {c.rpc.type for c in csi.controller.ControllerGetCapabilities(
        pb.ControllerGetCapabilitiesRequest()).capabilities}
    assert caps >= {
        CtrlCap.CREATE_DELETE_VOLUME, CtrlCap.LIST_VOLUMES, CtrlCap.GET_CAPACITY,
        CtrlCap.CREATE_DELETE_SNAPSHOT, CtrlCap.LIST_SNAPSHOTS, CtrlCap.CLONE_VOLUME,
        CtrlCap.EXPAND_VOLUME, CtrlCap.GET_VOLUME, CtrlCap.VOLUME_CONDITION,
        CtrlCap.LIST_VOLUMES_PUBLISHED_NODES, CtrlCap.GET_SNAPSHOT}
    # node-local volumes: nothing to attach, so no controller publish
    assert CtrlCap.PUBLISH_UNPUBLISH_VOLUME not in caps


def test_node_capabilities(csi):
    caps = {c.rpc.type for c in csi.node.NodeGetCapabilities(
        pb.NodeGetCapabilitiesRequest()).capabilities}
    assert caps >= {NodeCap.STAGE_UNSTAGE_VOLUME, NodeCap.GET_VOLUME_STATS,
                    NodeCap.EXPAND_VOLUME, NodeCap.VOLUME_CONDITION}


def test_node_info_topology(csi, driver):
    info = csi.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert info.node_id == driver.node_id
    assert dict(info.accessible_topology.segments) == {TOPOLOGY_KEY: driver.node_id}


def test_volume_topology_matches_node(csi, driver):
    vol = csi.create("bind")
    assert [dict(t.segments) for t in vol.accessible_topology] == [{TOPOLOGY_KEY: driver.node_id}]
