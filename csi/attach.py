"""ControllerPublishVolume / ControllerUnpublishVolume, served with --enable-attach.

There is nothing to attach (the storage is on the node, or reached by every
node for gluster): publishing checks that the volume can be used on the node
and records the attachment, which ListVolumes and ControllerGetVolume report
as published node IDs and which keeps DeleteVolume from removing the volume.
"""

from csi import checks
from csi.driver import get_volume
from csi.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from csi.state import Attachment
from csi.v1 import csi_pb2

Mode = csi_pb2.VolumeCapability.AccessMode
READ_ONLY_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})
# modes a volume may be attached to several nodes with
MULTI_NODE_MODES = frozenset({Mode.MULTI_NODE_READER_ONLY, Mode.MULTI_NODE_SINGLE_WRITER,
                              Mode.MULTI_NODE_MULTI_WRITER})


def _check_node(driver, vol, node_id):
    if vol.kind not in checks.SHARED_KINDS and node_id != driver.config.node_id:
        raise NotFound(f"volume {vol.id} lives on node {driver.config.node_id}, "
                       f"not on {node_id!r}")


def publish(driver, request):
    cap = request.volume_capability
    with driver.busy.hold(request.volume_id):
        with driver.store.transaction() as tx:
            vol = get_volume(tx, request.volume_id)
            _check_node(driver, vol, request.node_id)
            cap = checks.capability(cap, vol.kind)
            readonly = request.readonly or cap.access_mode.mode in READ_ONLY_MODES
            wanted = Attachment(vol.id, request.node_id, readonly, checks.fingerprint(cap))
            attached = tx.attachments(volume_id=vol.id)
            same_node = [a for a in attached if a.node_id == request.node_id]
            if same_node:
                if same_node[0] != wanted:
                    raise AlreadyExists(f"volume {vol.id} is published to {request.node_id} "
                                        "with another capability or read-only setting")
            else:
                if attached and cap.access_mode.mode not in MULTI_NODE_MODES:
                    raise FailedPrecondition(f"volume {vol.id} is published to node "
                                             f"{attached[0].node_id} already")
                limit = driver.config.max_volumes
                if limit and len(tx.attachments(node_id=request.node_id)) >= limit:
                    raise ResourceExhausted(f"node {request.node_id} has {limit} volumes "
                                            "published, its maximum")
                tx.add_attachment(wanted)
    return csi_pb2.ControllerPublishVolumeResponse(publish_context={})


def unpublish(driver, request):
    """Idempotent: a volume that is gone, or not published to that node, is
    not published there (as the external-attacher expects)."""
    with driver.busy.hold(request.volume_id):
        with driver.store.transaction() as tx:
            for att in tx.attachments(volume_id=request.volume_id):
                if att.node_id == request.node_id or not request.node_id:   # no node: every node
                    tx.delete_attachment(att.volume_id, att.node_id)
    return csi_pb2.ControllerUnpublishVolumeResponse()


def published_nodes(tx, vol, node_id):
    """Node IDs a volume is published to: attachments, and this node when a pod uses it."""
    nodes = {a.node_id for a in tx.attachments(volume_id=vol.id)}
    if tx.publications(vol.id):
        nodes.add(node_id)
    return sorted(nodes)


def check_detached(tx, vol):
    attached = tx.attachments(volume_id=vol.id)
    if attached:
        raise FailedPrecondition(f"volume {vol.id} is still published to node(s) "
                                 f"{', '.join(a.node_id for a in attached)}")
