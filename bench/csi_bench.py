"""CSI benchmark: what a CO waits for, through the driver's real gRPC socket.

- one full volume lifecycle (CreateVolume, NodeStage, NodePublish, write
  1 MiB + fsync, NodeUnpublish, NodeUnstage, DeleteVolume) for a bind volume
  and for a 1 GiB ext4 loop volume: median (and min/max) of N repetitions,
  with the median of each step;
- 200 bind volumes created one after another, then listed page by page
  (ListVolumes, max_entries 50), then deleted.

The driver runs as a subprocess with a throwaway state dir under /tmp; at the
end everything is deleted through the driver, and whatever might remain
(mounts, loop devices of that state dir) is removed before the dir goes.

    python -m bench.csi_bench [--csi-runs 5] [--csi-volumes 200] [--quick]
    python -m bench --only csi ...
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid

import grpc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
GiB = 1 << 30
TIMEOUT = 300

if REPO not in sys.path:
    sys.path.insert(0, REPO)
from csi import mounts  # noqa: E402
from csi.launcher import DriverProcess  # noqa: E402
from csi.v1 import csi_pb2 as pb  # noqa: E402

Mode = pb.VolumeCapability.AccessMode.Mode
STEPS = ("create", "stage", "publish", "write", "unpublish", "unstage", "delete")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.csi_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--csi-runs", type=int, default=5, help="lifecycle repetitions per kind (median)")
    parser.add_argument("--csi-volumes", type=int, default=200, help="volumes in the create/list test")
    parser.add_argument("--csi-page", type=int, default=50, help="max_entries of each ListVolumes page")
    parser.add_argument("--quick", action="store_true", help="shrink everything (CI smoke run)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args, _ = parser.parse_known_args(argv)    # other benches' flags pass through `python -m bench`
    if args.quick:
        args.csi_runs, args.csi_volumes = min(args.csi_runs, 2), min(args.csi_volumes, 20)
    return args


# ------------------------------------------------------------------ driver
class Driver(DriverProcess):
    """The driver in a subprocess, with its own state dir, socket and log under root."""

    def __init__(self, root):
        self.log = open(os.path.join(root, "driver.log"), "wb")
        super().__init__(os.path.join(root, "state"), os.path.join(root, "csi.sock"),
                         node_id="bench-node", args=["--log-level", "warning"], stderr=self.log,
                         cwd=REPO, start_new_session=True, kubelet_dir=root)
        try:
            self.start(timeout=30)
        except (RuntimeError, TimeoutError) as e:
            self.stop()
            raise RuntimeError(f"{e}; see {self.log.name}") from e

    def stop(self):
        try:
            return super().stop(timeout=15)
        finally:
            self.log.close()


def scrub(root):
    """Remove what the driver may have left under root, then root itself."""
    mounts.release_under(root)
    if not mounts.mounts_under(root):
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------- the work
def mount_cap(fs_type=""):
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type=fs_type),
                               access_mode=pb.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER))


class Bench:
    def __init__(self, driver, work):
        self.d = driver
        self.work = work
        self.volumes = set()     # created and not yet deleted, for the final cleanup

    def create(self, name, params, cap, size):
        vol = self.d.controller.CreateVolume(pb.CreateVolumeRequest(
            name=name, parameters=params, volume_capabilities=[cap],
            capacity_range=pb.CapacityRange(required_bytes=size)), timeout=TIMEOUT).volume
        self.volumes.add(vol.volume_id)
        return vol.volume_id

    def delete(self, volume_id):
        self.d.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id), timeout=TIMEOUT)
        self.volumes.discard(volume_id)

    def lifecycle(self, params, cap, size):
        """One full lifecycle; returns {step: seconds}."""
        times = {}
        staging = tempfile.mkdtemp(prefix="staging-", dir=self.work)
        target = os.path.join(self.work, f"target-{uuid.uuid4().hex[:8]}")
        block = os.urandom(MiB)

        def step(name, fn):
            t0 = time.perf_counter()
            result = fn()
            times[name] = time.perf_counter() - t0
            return result

        def write():
            with open(os.path.join(target, "data.bin"), "wb") as f:
                f.write(block)
                f.flush()
                os.fsync(f.fileno())

        volume_id = step("create", lambda: self.create(f"bench-{uuid.uuid4()}", params, cap, size))
        step("stage", lambda: self.d.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=staging, volume_capability=cap), timeout=TIMEOUT))
        step("publish", lambda: self.d.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=volume_id, staging_target_path=staging, target_path=target,
            volume_capability=cap), timeout=TIMEOUT))
        step("write", write)
        step("unpublish", lambda: self.d.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
            volume_id=volume_id, target_path=target), timeout=TIMEOUT))
        step("unstage", lambda: self.d.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=volume_id, staging_target_path=staging), timeout=TIMEOUT))
        step("delete", lambda: self.delete(volume_id))
        os.rmdir(staging)
        return times

    def many(self, count, page):
        """Create `count` bind volumes, list them all page by page, delete them."""
        cap = mount_cap()
        t0 = time.perf_counter()
        made = [self.create(f"many-{i}", {"kind": "bind"}, cap, MiB) for i in range(count)]
        create_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        listed, token, pages = [], "", 0
        while True:
            resp = self.d.controller.ListVolumes(pb.ListVolumesRequest(
                max_entries=page, starting_token=token), timeout=TIMEOUT)
            listed.extend(e.volume.volume_id for e in resp.entries)
            pages += 1
            token = resp.next_token
            if not token:
                break
        list_s = time.perf_counter() - t0
        if not set(made) <= set(listed):
            raise RuntimeError(f"ListVolumes lost {len(set(made) - set(listed))} volumes")

        t0 = time.perf_counter()
        for volume_id in made:
            self.delete(volume_id)
        delete_s = time.perf_counter() - t0
        return create_s, list_s, pages, delete_s

    def cleanup(self):
        for volume_id in list(self.volumes):
            try:
                self.delete(volume_id)
            except grpc.RpcError:
                pass


def run(report, runs=5, volumes=200, page=50):
    """Run the benchmark; `report(section, name, value, unit)` receives every figure."""
    root = tempfile.mkdtemp(prefix="ppcsibench-", dir="/tmp")
    driver = None
    try:
        driver = Driver(root)
        work = os.path.join(root, "work")
        os.mkdir(work)
        bench = Bench(driver, work)
        try:
            kinds = [("bind", {"kind": "bind"}, mount_cap(), 64 * MiB),
                     ("ext4 loop 1 GiB", {"kind": "loop"}, mount_cap("ext4"), GiB)]
            for label, params, cap, size in kinds:
                bench.lifecycle(params, cap, size)           # warm-up, not counted
                samples = [bench.lifecycle(params, cap, size) for _ in range(runs)]
                totals = [sum(s.values()) for s in samples]
                report(f"lifecycle {label}", "total (median)", statistics.median(totals), "s")
                report(f"lifecycle {label}", "total (min..max)", (min(totals), max(totals)), "s")
                for name in STEPS:
                    report(f"lifecycle {label}", name, statistics.median(s[name] for s in samples), "s")
            create_s, list_s, pages, delete_s = bench.many(volumes, page)
            section = f"{volumes} bind volumes"
            report(section, "create all (sequential)", create_s, "s")
            report(section, "create, per volume", create_s / volumes, "s")
            report(section, f"list all ({pages} pages of {page})", list_s, "s")
            report(section, "delete all (sequential)", delete_s, "s")
        finally:
            bench.cleanup()
    finally:
        if driver is not None:
            driver.stop()
        scrub(root)


def _fmt(value, unit):
    if isinstance(value, tuple):
        return " .. ".join(_fmt(v, unit) for v in value)
    if unit == "s":
        return f"{value * 1000:9.1f} ms" if value < 10 else f"{value:9.2f} s"
    return f"{value} {unit}"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("csi bench: needs root (loop devices, mounts)", file=sys.stderr)
        return 1
    rows = []

    def report(section, name, value, unit):
        rows.append((section, name, value, unit))

    print(f"CSI driver: {args.csi_runs} lifecycles per kind (medians), "
          f"{args.csi_volumes} volumes created then listed", flush=True)
    run(report, runs=args.csi_runs, volumes=args.csi_volumes, page=args.csi_page)
    width = max(len(name) for _, name, _, _ in rows) + 2
    section = None
    for sec, name, value, unit in rows:
        if sec != section:
            print(f"\n{sec}")
            section = sec
        print(f"  {name:<{width}}{_fmt(value, unit)}")
    if args.json:
        print(json.dumps([{"section": s, "name": n, "value": v, "unit": u} for s, n, v, u in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
