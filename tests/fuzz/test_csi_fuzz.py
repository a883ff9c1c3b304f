"""Malformed CSI requests fed to a running driver: a bounded number of cases from a fixed seed
(PODPLUMB_FUZZ_SEED / PODPLUMB_FUZZ_CASES change them).

Each case is answered with OK or one of the spec's codes, never INTERNAL or UNKNOWN; the driver
keeps serving; and afterwards nothing is left: no mount, no loop device, the occupied paths the
requests aimed at are byte for byte as they were, and nothing appeared outside the test's root.
"""

import os
import random
import uuid

import grpc

from tests.csi.conftest import (Driver, block_cap, dispose_root, kind_cap, mount_cap, new_root,
                                pb)
from tests.csi.test_targets import snapshot_of

SEED = int(os.environ.get("PODPLUMB_FUZZ_SEED", "20261129"))
CASES = int(os.environ.get("PODPLUMB_FUZZ_CASES", "300"))
TIMEOUT = 60
Mode = pb.VolumeCapability.AccessMode.Mode
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}


class Fuzz:
    def __init__(self, drv, rng):
        self.drv, self.rng = drv, rng
        self.work = drv.root / "work"
        self.work.mkdir()
        self.outside = f"/tmp/pp-csifuzz-{uuid.uuid4().hex[:8]}"
        self.occupied = self._occupied()
        self.volumes, self.snapshots, self.groups = [], [], []
        self.staged, self.published = set(), set()
        self.sane = False       # this case: well-formed parts, so that some requests succeed
        self.caps = {}
        for kind in ("bind", "ext4", "block"):
            self.volumes.append(self._create(kind))
            self.caps[self.volumes[-1]] = kind_cap(kind)

    def _occupied(self):
        made = {}
        f = self.work / "file"
        f.write_bytes(b"data")
        made["file"] = f
        d = self.work / "full-dir"
        d.mkdir()
        (d / "x").write_text("x")
        made["full-dir"] = d
        fifo = self.work / "fifo"
        os.mkfifo(fifo)
        made["fifo"] = fifo
        link = self.work / "link"
        link.symlink_to(d)
        made["link"] = link
        return made

    def _create(self, kind):
        cap = kind_cap({"bind": "bind", "ext4": "ext4", "block": "block"}[kind])
        params = {"kind": "bind" if kind == "bind" else "loop"}
        return self.drv.controller.CreateVolume(pb.CreateVolumeRequest(
            name=f"fuzz-{kind}", capacity_range=pb.CapacityRange(required_bytes=32 << 20),
            volume_capabilities=[cap], parameters=params), timeout=TIMEOUT).volume.volume_id

    # -- random parts
    def volume_id(self):
        if self.sane:
            return self.rng.choice(list(self.caps) + [f"csi-{self.rng.randrange(1 << 64):016x}"])
        return self.rng.choice(self.volumes + [
            f"csi-{self.rng.randrange(1 << 64):016x}", "csi-fixed",
            "", "vol-" + "0" * 32, "vol-" + "0" * 32 + "\n", "../../etc", "x" * 5000,
            self.volumes[0].upper(), self.volumes[0] + "/", "\x00"])

    def path(self, vid=None):
        fresh = str(self.work / f"p-{self.rng.randrange(1 << 30):x}")
        if self.sane:
            used = [p for v, p in self.staged | self.published if v == vid]
            return self.rng.choice(used + [fresh]) if used and self.rng.random() < 0.5 else fresh
        return self.rng.choice([
            fresh, fresh, fresh, "", "some/path", "/", self.outside, str(self.drv.state_dir),
            str(self.drv.state_dir / "volumes" / "x"), str(self.drv.root), fresh + "/../x",
            fresh + "/", fresh + "\x00", "/" + "a" * 5000,
            *map(str, self.occupied.values())])

    def capability(self, vid=None):
        if self.sane:
            return self.caps.get(vid, mount_cap())
        cap = self.rng.choice([
            mount_cap(), mount_cap("ext4"), mount_cap("xfs"), block_cap(),
            mount_cap("btrfs"), mount_cap(flags=["loop"]), mount_cap(flags=["X-mount.mkdir"]),
            mount_cap(flags=["", "ro"]), mount_cap(flags=["remount,bind"]),
            mount_cap(mode=Mode.MULTI_NODE_MULTI_WRITER), mount_cap(mode=Mode.UNKNOWN),
            pb.VolumeCapability(), pb.VolumeCapability(
                access_mode=pb.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER))])
        return cap

    def context(self, vid=None):
        if self.sane:
            if vid in self.caps:
                return {}
            return {"csi.storage.k8s.io/ephemeral": "true",
                    "kind": self.rng.choice(["tmpfs", "loop", "bind"]), "size": "16Mi"}
        return self.rng.choice([{}, {}, {"kind": "gluster"},
                                {"kind": "gluster", "glusterServer": "::::", "glusterVolume": "/"},
                                {"csi.storage.k8s.io/ephemeral": "true",
                                 "kind": self.rng.choice(["tmpfs", "loop", "bind", "nfs"]),
                                 "size": self.rng.choice(["1Ei", "-1", "abc", "16Mi", "1e3"])},
                                {"csi.storage.k8s.io/ephemeral": "true"},
                                {"x" * 300: "y" * 5000}])

    def size(self):
        if self.sane:
            return 48 << 20
        return self.rng.choice([0, -1, 1, 2 ** 63 - 1, 32 << 20, 48 << 20])

    # -- one case
    def case(self):
        r = self.rng
        self.sane = r.random() < 0.5
        rpc = r.choice(["stage", "unstage", "publish", "publish", "unpublish", "stats",
                        "node_expand", "create", "delete", "snapshot", "validate", "expand",
                        "group", "get_group", "delete_group"])
        node, ctl = self.drv.node, self.drv.controller
        vid = self.volume_id()
        if rpc == "stage":
            path = self.path()
            return (node.NodeStageVolume, pb.NodeStageVolumeRequest(
                volume_id=vid, staging_target_path=path, volume_capability=self.capability(vid),
                volume_context=self.context(vid)), ("staged", (vid, path)))
        if rpc == "unstage":
            return (node.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
                volume_id=vid, staging_target_path=self.path(vid)), None)
        if rpc == "publish":
            staging = r.choice([s for v, s in self.staged if v == vid] or [self.path()])
            target = self.path()
            return (node.NodePublishVolume, pb.NodePublishVolumeRequest(
                volume_id=vid, staging_target_path=r.choice([staging, staging, ""]),
                target_path=target, volume_capability=self.capability(vid),
                readonly=r.random() < 0.3, volume_context=self.context(vid)),
                ("published", (vid, target)))
        if rpc == "unpublish":
            return (node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
                volume_id=vid, target_path=self.path(vid)), None)
        if rpc == "stats":
            return (node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
                volume_id=vid, volume_path=self.path(vid)), None)
        if rpc == "node_expand":
            return (node.NodeExpandVolume, pb.NodeExpandVolumeRequest(
                volume_id=vid, volume_path=self.path(vid),
                capacity_range=pb.CapacityRange(required_bytes=self.size())), None)
        if rpc == "create":
            return (ctl.CreateVolume, pb.CreateVolumeRequest(
                name=r.choice(["", "n" * 200, "a\x07", f"fz-{r.random()}"]),
                capacity_range=pb.CapacityRange(required_bytes=self.size(),
                                                limit_bytes=self.size()),
                volume_capabilities=[self.capability()],
                parameters=r.choice([{}, {"kind": "nope"}, {"kind": "loop"}, {"kind": "bind"},
                                     {"kind": "gluster"}, {"kind": "loop", "x": "y"}])),
                ("volume", None))
        if rpc == "delete":
            return (ctl.DeleteVolume, pb.DeleteVolumeRequest(
                volume_id=r.choice(["", "vol-" + "0" * 32, "../x", "snap-" + "1" * 32])), None)
        if rpc == "snapshot":
            return (ctl.CreateSnapshot, pb.CreateSnapshotRequest(
                source_volume_id=vid, name=r.choice(["", "s\x00", f"fzs-{r.random()}"])),
                ("snapshot", None))
        group = self.drv.group
        if rpc == "group":
            ids = [self.volume_id() for _ in range(r.randrange(0, 4))]
            return (group.CreateVolumeGroupSnapshot, pb.CreateVolumeGroupSnapshotRequest(
                name=r.choice(["", "g\x01", f"fzg-{r.random()}", "fzg-fixed"]),
                source_volume_ids=ids), ("group", None))
        if rpc in ("get_group", "delete_group"):
            gid = r.choice(self.groups + ["", "group-" + "0" * 32, "../x", "snap-" + "0" * 32])
            request = (pb.GetVolumeGroupSnapshotRequest if rpc == "get_group" else
                       pb.DeleteVolumeGroupSnapshotRequest)(
                group_snapshot_id=gid, snapshot_ids=r.choice([[], ["x"], [gid]]))
            call = (group.GetVolumeGroupSnapshot if rpc == "get_group"
                    else group.DeleteVolumeGroupSnapshot)
            return call, request, None
        if rpc == "validate":
            return (ctl.ValidateVolumeCapabilities, pb.ValidateVolumeCapabilitiesRequest(
                volume_id=vid, volume_capabilities=[self.capability()],
                volume_context=self.context()), None)
        return (ctl.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=pb.CapacityRange(required_bytes=self.size())), None)

    def remember(self, effect, response):
        what, key = effect
        if what == "staged":
            self.staged.add(key)
        elif what == "published":
            self.published.add(key)
        elif what == "volume":
            self.volumes.append(response.volume.volume_id)
        elif what == "snapshot":
            self.snapshots.append(response.snapshot.snapshot_id)
        elif what == "group":
            self.groups.append(response.group_snapshot.group_snapshot_id)

    def undo(self):
        node, ctl = self.drv.node, self.drv.controller
        for vid, target in self.published:
            node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
                volume_id=vid, target_path=target), timeout=TIMEOUT)
        for vid, staging in self.staged:
            node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
                volume_id=vid, staging_target_path=staging), timeout=TIMEOUT)
        for gid in self.groups:
            self.drv.group.DeleteVolumeGroupSnapshot(pb.DeleteVolumeGroupSnapshotRequest(
                group_snapshot_id=gid), timeout=TIMEOUT)
        for snap in self.snapshots:
            ctl.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap), timeout=TIMEOUT)
        for vid in self.volumes:
            ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)


def test_malformed_csi_requests_answered_cleanly_and_leave_nothing():
    root = new_root("ppcsifz-")
    drv = Driver(root).start()
    failures = []
    try:
        fuzz = Fuzz(drv, random.Random(SEED))
        before = {k: snapshot_of(p) for k, p in fuzz.occupied.items()}
        for i in range(CASES):
            call, request, effect = fuzz.case()
            try:
                response = call(request, timeout=TIMEOUT)
            except grpc.RpcError as err:
                if err.code() in NEVER:
                    failures.append(f"case {i} {type(request).__name__}: {err.code().name} "
                                    f"{err.details()}\n  {request!r:.400}")
                continue
            if effect:
                fuzz.remember(effect, response)
        assert drv.proc.poll() is None, "the driver died"
        fuzz.undo()
        after = {k: snapshot_of(p) for k, p in fuzz.occupied.items()}
        assert after == before, "an occupied path was changed"
        assert not os.path.lexists(fuzz.outside), "the driver wrote outside its kubelet dir"
    finally:
        log = drv.log_tail()
        leftovers = dispose_root(root, drv)
    assert not failures, "\n".join(failures) + "\n--- driver log ---\n" + log
    assert not leftovers, f"left behind: {leftovers}"
