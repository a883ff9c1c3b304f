"""A short tour of the CSI driver on this machine (root, real kernel).

Starts the driver on a temp socket and state dir, provisions a bind volume and
a 64 MiB ext4 loop volume, stages, publishes, writes, snapshots, restores into
a new volume, checks the bytes, then tears everything down. Whatever happens,
nothing is left behind: mounts, loop devices and temp dirs are removed.
"""

import hashlib
import os
import tempfile

from csi.launcher import temporary_driver
from csi.v1 import csi_pb2 as pb

MiB = 1 << 20
MODE = pb.VolumeCapability.AccessMode


def _mount_cap(fs_type=""):
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type=fs_type),
                               access_mode=MODE(mode=MODE.SINGLE_NODE_WRITER))


class _Tour:
    def __init__(self, driver, out):
        self.driver, self.out = driver, out
        self.published = []      # (volume_id, staging, target)

    def create(self, name, kind, size, cap, source=None):
        req = pb.CreateVolumeRequest(name=name, volume_capabilities=[cap], parameters={"kind": kind},
                                     capacity_range=pb.CapacityRange(required_bytes=size))
        if source:
            req.volume_content_source.snapshot.snapshot_id = source
        vol = self.driver.controller.CreateVolume(req).volume
        origin = f" from {source}" if source else ""
        self.out(f"created {kind} volume {name}: {vol.volume_id} ({vol.capacity_bytes // MiB} MiB){origin}")
        return vol.volume_id

    def mount(self, volume_id, cap, label):
        staging = os.path.join(self.driver.root, "kubelet", "staging", label)
        target = os.path.join(self.driver.root, "kubelet", "pods", label, "volume")
        os.makedirs(staging)
        os.makedirs(os.path.dirname(target))
        self.driver.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=staging, volume_capability=cap))
        self.driver.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=volume_id, staging_target_path=staging, target_path=target,
            volume_capability=cap))
        self.published.append((volume_id, staging, target))
        self.out(f"staged and published {volume_id} at {target}")
        return target

    def unmount_all(self):
        while self.published:
            volume_id, staging, target = self.published.pop()
            self.driver.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
                volume_id=volume_id, target_path=target))
            self.driver.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
                volume_id=volume_id, staging_target_path=staging))
            self.out(f"unpublished and unstaged {volume_id}")


def run_demo(out=print):
    """Run the tour, printing one line per step; returns 0 or raises after cleaning up."""
    with tempfile.TemporaryFile("w+") as log, \
            temporary_driver(prefix="podplumb-csi-demo-", stderr=log) as driver:
        try:
            _tour(driver, out)
        except BaseException:
            log.seek(0)
            out("failed; the driver's last log lines:")
            for line in log.read().splitlines()[-15:]:
                out("  " + line)
            raise
    out("stopped the driver; no mount, loop device or file left behind")
    return 0


def _tour(driver, out):
    info = driver.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    out(f"driver {info.name} {info.vendor_version} ready on {driver.socket_path}")
    tour = _Tour(driver, out)
    ext4 = _mount_cap("ext4")

    bind_id = tour.create("demo-bind", "bind", 16 * MiB, _mount_cap())
    loop_id = tour.create("demo-loop", "loop", 64 * MiB, ext4)
    bind_dir = tour.mount(bind_id, _mount_cap(), "bind")
    loop_dir = tour.mount(loop_id, ext4, "loop")

    payload = os.urandom(MiB)
    digest = hashlib.sha256(payload).hexdigest()[:16]
    for directory in (bind_dir, loop_dir):
        with open(os.path.join(directory, "data.bin"), "wb") as f:
            f.write(payload)
    out(f"wrote 1 MiB (sha256 {digest}...) into both volumes")

    snap = driver.controller.CreateSnapshot(pb.CreateSnapshotRequest(
        source_volume_id=loop_id, name="demo-snap")).snapshot
    out(f"snapshot {snap.snapshot_id} of {loop_id} ({snap.size_bytes // MiB} MiB, "
        f"ready={snap.ready_to_use})")

    restored_id = tour.create("demo-restored", "loop", 64 * MiB, ext4, source=snap.snapshot_id)
    restored_dir = tour.mount(restored_id, ext4, "restored")
    with open(os.path.join(restored_dir, "data.bin"), "rb") as f:
        same = f.read() == payload
    out(f"read back from the restored volume: {'same bytes' if same else 'DIFFERENT bytes'}")
    if not same:
        raise RuntimeError("restored data differs from what was written")

    tour.unmount_all()
    for volume_id in (restored_id, loop_id, bind_id):
        driver.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id))
    driver.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    out("deleted the volumes and the snapshot")


if __name__ == "__main__":
    raise SystemExit(run_demo())
