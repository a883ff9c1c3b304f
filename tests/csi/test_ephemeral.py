"""Ephemeral inline volumes, published as kubelet does: NodePublishVolume with
`csi.storage.k8s.io/ephemeral: "true"`, no staging, attributes kind and size."""

import errno
import os
import shutil
import subprocess
import uuid

import pytest

from .conftest import (
    Code,
    MiB,
    block_cap,
    code_of,
    is_mountpoint,
    loops_backed_under,
    mount_cap,
    mount_count,
    mounts_under,
    pb,
    settle,
)
from .test_targets import snapshot_of


def inline_id():
    return "csi-" + uuid.uuid4().hex * 2          # kubelet: csi-<sha256>


def publish_request(volume_id, target, attrs, cap=None, readonly=False):
    context = {"csi.storage.k8s.io/ephemeral": "true",
               "csi.storage.k8s.io/pod.name": "web-0", "csi.storage.k8s.io/pod.namespace": "ns",
               "csi.storage.k8s.io/pod.uid": str(uuid.uuid4()), **attrs}
    return pb.NodePublishVolumeRequest(volume_id=volume_id, target_path=str(target),
                                       volume_capability=cap or mount_cap(), readonly=readonly,
                                       volume_context=context)


def pod_target(csi):
    """<pod dir>/volumes/kubernetes.io~csi/<name>/mount, the pod dir made as kubelet does."""
    parent = csi.dir("pod") / "volumes" / "kubernetes.io~csi" / "inline"
    parent.mkdir(parents=True)
    return parent / "mount"


def publish(csi, attrs, target=None, **kw):
    volume_id = inline_id()
    target = target or pod_target(csi)
    csi.node.NodePublishVolume(publish_request(volume_id, target, attrs, **kw), timeout=60)
    csi.published.append((volume_id, str(target)))
    return volume_id, target


def fs_type(path):
    return subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)],
                          capture_output=True, text=True).stdout.split()[-1]


def write_mib(path, mib):
    """Write mib MiB into a new file at path; the errno it stopped with, or 0."""
    chunk = b"\xa5" * MiB
    try:
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e.errno
    return 0


def ephemeral_files(driver):
    return sorted(os.listdir(driver.state_dir / "ephemeral"))


def test_tmpfs_size_is_enforced_by_the_kernel(csi, driver):
    volume_id, target = publish(csi, {"kind": "tmpfs", "size": "16Mi"})
    assert fs_type(target) == "tmpfs" and mount_count(target) == 1
    assert write_mib(target / "small", 8) == 0
    os.unlink(target / "small")
    assert write_mib(target / "big", 24) == errno.ENOSPC
    usage = {u.unit: u for u in csi.stats(volume_id, target).usage}
    assert usage[pb.VolumeUsage.BYTES].total == 16 * MiB
    assert ephemeral_files(driver) == []            # nothing on disk
    csi.unpublish(volume_id, target)
    assert not is_mountpoint(target) and not os.path.lexists(target)
    assert code_of(csi.node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
        volume_id=volume_id, volume_path=str(target))) == Code.NOT_FOUND


def test_bind_inline_volume(csi, driver):
    volume_id, target = publish(csi, {"kind": "bind"})
    (target / "data").write_text("hello")
    [made] = ephemeral_files(driver)
    assert (driver.state_dir / "ephemeral" / made / "data").read_text() == "hello"
    csi.unpublish(volume_id, target)
    assert not is_mountpoint(target) and not os.path.lexists(target)
    assert ephemeral_files(driver) == []


def test_loop_inline_volume_made_formatted_mounted_and_removed(csi, driver):
    volume_id, target = publish(csi, {"kind": "loop", "size": "32Mi"}, cap=mount_cap("ext4"))
    assert fs_type(target) == "ext4"
    st = os.statvfs(target)
    assert 24 * MiB < st.f_blocks * st.f_frsize <= 32 * MiB
    assert len(loops_backed_under(driver.state_dir)) == 1
    assert write_mib(target / "f", 4) == 0
    csi.unpublish(volume_id, target)
    assert not is_mountpoint(target) and not os.path.lexists(target)
    assert not settle(lambda: loops_backed_under(driver.state_dir))
    assert ephemeral_files(driver) == []


def test_readonly_inline_volume(csi):
    volume_id, target = publish(csi, {"kind": "tmpfs", "size": "1Mi"}, readonly=True)
    assert write_mib(target / "f", 1) == errno.EROFS


def test_idempotent_and_conflicts(csi):
    attrs = {"kind": "tmpfs", "size": "8Mi"}
    volume_id, target = publish(csi, attrs)
    csi.node.NodePublishVolume(publish_request(volume_id, target, attrs), timeout=60)
    assert mount_count(target) == 1
    assert code_of(csi.node.NodePublishVolume, publish_request(
        volume_id, target, {"kind": "tmpfs", "size": "9Mi"})) == Code.ALREADY_EXISTS
    assert code_of(csi.node.NodePublishVolume, publish_request(
        volume_id, pod_target(csi), attrs)) == Code.ALREADY_EXISTS
    assert code_of(csi.node.NodePublishVolume, publish_request(
        inline_id(), target, attrs)) == Code.ALREADY_EXISTS
    assert mount_count(target) == 1
    # unpublish elsewhere leaves it; at its target removes it
    csi.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
        volume_id=volume_id, target_path=str(pod_target(csi))), timeout=60)
    assert mount_count(target) == 1


@pytest.mark.parametrize("attrs,cap,code", [
    ({"kind": "nfs"}, None, Code.INVALID_ARGUMENT),
    ({"kind": "tmpfs", "size": "abc"}, None, Code.INVALID_ARGUMENT),
    ({"kind": "tmpfs", "size": "-1Mi"}, None, Code.INVALID_ARGUMENT),
    ({"kind": "tmpfs", "size": "0"}, None, Code.INVALID_ARGUMENT),
    ({"kind": "tmpfs", "size": "1Ei"}, None, Code.RESOURCE_EXHAUSTED),
    ({"kind": "tmpfs", "size": "99Ei"}, None, Code.INVALID_ARGUMENT),
    ({"kind": "loop", "size": "100Ti"}, None, Code.RESOURCE_EXHAUSTED),
    ({"kind": "loop", "size": "1Ki"}, None, Code.INVALID_ARGUMENT),
    ({"kind": "loop", "size": "32Mi"}, mount_cap("xfs"), Code.INVALID_ARGUMENT),
    ({"kind": "tmpfs", "size": "1Mi"}, mount_cap("ext4"), Code.INVALID_ARGUMENT),
    ({"kind": "loop", "size": "32Mi"}, block_cap(), Code.INVALID_ARGUMENT),
    ({"kind": "tmpfs", "sise": "1Mi"}, None, Code.INVALID_ARGUMENT),
    ({"kind": "tmpfs", "size": "1Mi"}, mount_cap(flags=["loop"]), Code.INVALID_ARGUMENT),
], ids=lambda v: str(v) if not isinstance(v, pb.VolumeCapability) else "")
def test_validation(csi, driver, attrs, cap, code):
    volume_id, target = inline_id(), pod_target(csi)
    assert code_of(csi.node.NodePublishVolume,
                   publish_request(volume_id, target, attrs, cap=cap)) == code
    assert not os.path.lexists(target) and ephemeral_files(driver) == []
    assert code_of(csi.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
        volume_id=volume_id, target_path=str(target))) == Code.NOT_FOUND


def test_bad_ids_and_targets(csi, driver):
    attrs = {"kind": "tmpfs", "size": "1Mi"}
    for bad in ["../etc", "a/b", "vol-" + "0" * 32, "x" * 200, "id\n"]:
        assert code_of(csi.node.NodePublishVolume, publish_request(
            bad, pod_target(csi), attrs)) == Code.INVALID_ARGUMENT, bad
    occupied = pod_target(csi)
    occupied.write_text("not a directory")
    before = snapshot_of(occupied)
    assert code_of(csi.node.NodePublishVolume, publish_request(
        inline_id(), occupied, attrs)) == Code.INVALID_ARGUMENT
    assert snapshot_of(occupied) == before
    outside = f"/tmp/pp-inline-{uuid.uuid4().hex[:8]}"
    csi.guard(outside)
    assert code_of(csi.node.NodePublishVolume, publish_request(
        inline_id(), outside, attrs)) == Code.INVALID_ARGUMENT


KINDS3 = [({"kind": "tmpfs", "size": "4Mi"}, None), ({"kind": "bind"}, None),
          ({"kind": "loop", "size": "16Mi"}, mount_cap("ext4"))]


def test_unpublish_after_restart_and_after_reboot(csi_own, own_driver):
    csi = csi_own
    made = [publish(csi, attrs, cap=cap) for attrs, cap in KINDS3]
    own_driver.restart()
    for volume_id, target in made:
        assert mount_count(target) == 1
    # a reboot: every mount and loop device gone while the driver is down
    own_driver.stop()
    for point in sorted(mounts_under(own_driver.root), key=len, reverse=True):
        subprocess.run(["umount", point], check=True)
    for device in loops_backed_under(own_driver.state_dir):
        subprocess.run(["losetup", "-d", device], check=True)
    own_driver.start()
    for volume_id, target in made:
        assert mount_count(target) == 1, target       # mounted again at start-up
    for volume_id, target in made:
        csi.unpublish(volume_id, target)
        assert not is_mountpoint(target) and not os.path.lexists(target)
    assert ephemeral_files(own_driver) == []


def test_leftovers_of_gone_pods_cleaned_at_start(csi_own, own_driver):
    csi = csi_own
    made = [publish(csi, attrs, cap=cap) for attrs, cap in KINDS3]
    own_driver.kill9()
    for volume_id, target in made:           # the pod is gone: its directory too
        subprocess.run(["umount", str(target)], check=True)
        shutil.rmtree(target.parents[3])
    own_driver.start()
    assert ephemeral_files(own_driver) == []
    assert not settle(lambda: loops_backed_under(own_driver.state_dir))
    for volume_id, target in made:
        assert code_of(csi.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
            volume_id=volume_id, target_path=str(target))) == Code.NOT_FOUND
        csi.published.remove((volume_id, str(target)))
