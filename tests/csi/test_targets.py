"""What stands at a target decides whether the driver may publish there
(issue 15): only an absent path, an empty directory (mount) or an empty
regular file (block); anything else is refused and left byte for byte as it
was. Paths lie under --kubelet-dir, outside the state dir; mount flags come
from an allow-list; a live endpoint is never taken over."""

import os
import stat
import subprocess
import sys
import uuid

import pytest

from .conftest import (
    REPO,
    Code,
    block_cap,
    code_of,
    dispose_root,
    is_mountpoint,
    kind_cap,
    mount_cap,
    new_root,
    pb,
)


def snapshot_of(path):
    """Everything about path that the driver must not change."""
    st = os.lstat(path)
    out = {"mode": st.st_mode, "ino": st.st_ino, "mtime": st.st_mtime_ns, "size": st.st_size,
           "rdev": st.st_rdev}
    if stat.S_ISREG(st.st_mode):
        out["bytes"] = open(path, "rb").read()
    elif stat.S_ISLNK(st.st_mode):
        out["link"] = os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        out["entries"] = {n: snapshot_of(os.path.join(path, n)) for n in sorted(os.listdir(path))}
    return out


def _make(kind, path, csi):
    if kind == "file":
        path.write_bytes(b"precious data\n")
    elif kind == "empty-file":
        path.touch()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "full-dir":
        path.mkdir()
        (path / "keep.txt").write_text("mine")
    elif kind == "empty-dir":
        path.mkdir()
    elif kind == "symlink-dir":
        os.symlink(csi.dir("elsewhere"), path)
    elif kind == "symlink-file":
        other = csi.path("other")
        other.write_text("x")
        os.symlink(other, path)
    elif kind == "dangling":
        os.symlink(csi.path("nowhere"), path)
    elif kind == "chardev":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))   # like /dev/null
    elif kind == "socket":
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    return path


REFUSED = {
    "mount": ["file", "empty-file", "fifo", "full-dir", "symlink-dir", "symlink-file", "dangling",
              "chardev", "socket"],
    "block": ["file", "fifo", "full-dir", "empty-dir", "symlink-file", "dangling", "chardev",
              "socket"],
}


@pytest.mark.parametrize("kind", ["bind", "ext4", "block"])
def test_occupied_targets_refused_and_untouched(csi, kind):
    vol = csi.create(kind)
    cap = kind_cap(kind)
    staging = csi.stage(vol.volume_id, cap)
    access = "block" if kind == "block" else "mount"
    for what in REFUSED[access]:
        target = _make(what, csi.path(f"t-{what}"), csi)
        before = snapshot_of(target)
        code = code_of(csi.node.NodePublishVolume,
                       csi.publish_request(vol.volume_id, staging, target, cap))
        if code == Code.OK:
            csi.published.append((vol.volume_id, str(target)))
        assert code == Code.INVALID_ARGUMENT, what
        assert not is_mountpoint(target), what
        assert snapshot_of(target) == before, f"{what} was changed"
        # an unpublish there (nothing recorded) leaves it alone too
        assert code_of(csi.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
            volume_id=vol.volume_id, target_path=str(target))) in (Code.OK, Code.INVALID_ARGUMENT)
        assert snapshot_of(target) == before, f"{what} was changed by unpublish"


@pytest.mark.parametrize("kind", ["bind", "block"])
def test_empty_targets_accepted(csi, kind):
    vol = csi.create(kind)
    cap = kind_cap(kind)
    staging = csi.stage(vol.volume_id, cap)
    target = _make("empty-dir" if kind == "bind" else "empty-file", csi.path("t"), csi)
    csi.publish(vol.volume_id, staging, cap, target)
    assert is_mountpoint(target)
    csi.publish(vol.volume_id, staging, cap, target)     # idempotent on a now-busy target
    csi.unpublish(vol.volume_id, target)
    assert not is_mountpoint(target)


def test_target_dir_made_by_driver_is_removed(csi):
    vol, staging, target = csi.ready("bind")
    csi.unpublish(vol.volume_id, target)
    assert not os.path.lexists(target)


def test_paths_outside_the_kubelet_dir(csi, driver):
    vol = csi.create("bind")
    cap = kind_cap("bind")
    outside = f"/tmp/pp-outside-{uuid.uuid4().hex[:8]}"
    csi.guard(outside)
    assert code_of(csi.node.NodeStageVolume,
                   csi.stage_request(vol.volume_id, outside, cap)) == Code.INVALID_ARGUMENT
    staging = csi.stage(vol.volume_id, cap)
    for target in (outside, str(driver.root), str(driver.state_dir),
                   str(driver.state_dir / "volumes"), str(driver.state_dir / "new-target")):
        code = code_of(csi.node.NodePublishVolume,
                       csi.publish_request(vol.volume_id, staging, target, cap))
        if code == Code.OK:
            csi.published.append((vol.volume_id, target))
        assert code == Code.INVALID_ARGUMENT, target
        assert not is_mountpoint(target)
    assert not os.path.lexists(driver.state_dir / "new-target")
    assert code_of(csi.node.NodeStageVolume, csi.stage_request(
        vol.volume_id, str(driver.state_dir / "volumes"), cap)) == Code.INVALID_ARGUMENT


BAD_FLAGS = ["loop", "bind", "rbind", "remount", "X-mount.mkdir", "x-mount.owner=0",
             "errors=panic", "offset=0", "helper=foo", "move", "context=x", "commit=99999999"]


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_mount_flags_outside_the_allow_list(csi, flag):
    cap = mount_cap("ext4", flags=[flag])
    assert code_of(csi.controller.CreateVolume,
                   csi.create_request("ext4", caps=[cap])) == Code.INVALID_ARGUMENT
    vol = csi.create("ext4")
    staging = csi.dir("staging")
    assert code_of(csi.node.NodeStageVolume,
                   csi.stage_request(vol.volume_id, staging, cap)) == Code.INVALID_ARGUMENT
    assert not is_mountpoint(staging)


def test_allowed_fs_flags(csi):
    cap = mount_cap("ext4", flags=["noatime", "commit=30", "data=ordered", "discard"])
    vol = csi.create("ext4", caps=[cap])
    staging = csi.stage(vol.volume_id, cap)
    target = csi.publish(vol.volume_id, staging, cap)
    assert is_mountpoint(target)


def test_second_driver_refuses_a_live_endpoint(driver):
    root = new_root()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "csi.server", "--endpoint", f"unix://{driver.socket}",
             "--node-id", "second", "--state-dir", str(root / "state"),
             "--kubelet-dir", str(root)],
            cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr[-500:]
        assert "another process answers" in proc.stderr
        assert driver.socket.exists()
        assert driver.identity.Probe(pb.ProbeRequest()).ready.value
    finally:
        assert not dispose_root(root)


def test_block_target_file_made_by_driver_is_removed(csi):
    vol = csi.create("block")
    cap = block_cap()
    staging = csi.stage(vol.volume_id, cap)
    target = csi.publish(vol.volume_id, staging, cap)
    assert os.path.isfile(target) or stat.S_ISBLK(os.stat(target).st_mode)
    csi.unpublish(vol.volume_id, target)
    assert not os.path.lexists(target)
