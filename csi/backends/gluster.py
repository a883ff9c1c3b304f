"""Gluster volumes: a sub-directory of an existing Gluster volume, with a
directory quota of the volume's size, shared by every node.

The volume's path is `<state>/gluster/<glusterVolume>@<servers>/<volume ID>`:
the directory as seen through the controller's FUSE mount of the whole
Gluster volume (made on demand, released when it holds no volume of ours),
and at the same time the name of everything the node side needs to mount
`server:/glusterVolume/<volume ID>` itself. A node learns a volume from the
volume context of NodeStageVolume, so nodes need no shared state.
"""

import contextlib
import json
import os
import shutil
import threading

from csi import gluster, layout, mounts
from csi.errors import CsiError, FailedPrecondition, InvalidArgument, Unavailable
from csi.state import Volume

PARAMETERS = frozenset({"glusterServer", "glusterVolume"})
FS_TYPE = "fuse.glusterfs"


@contextlib.contextmanager
def _as_csi_errors():
    try:
        yield
    except gluster.BadParameter as e:
        raise InvalidArgument(str(e)) from e
    except (gluster.Unreachable, gluster.Busy) as e:
        raise Unavailable(str(e)) from e
    except gluster.VolumeUnusable as e:
        raise FailedPrecondition(str(e)) from e
    except gluster.GlusterError as e:
        raise CsiError(str(e)) from e


def context_of(parameters):
    """The volume context of CreateVolume parameters (canonical, so that two
    requests for the same Gluster volume compare equal)."""
    missing = sorted(PARAMETERS - {k for k, v in parameters.items() if v})
    if missing:
        raise InvalidArgument(f"kind gluster needs parameter(s) {', '.join(missing)}")
    with _as_csi_errors():
        servers = gluster.parse_servers(parameters["glusterServer"])
        volume = gluster.check_volume_name(parameters["glusterVolume"])
    return {"kind": "gluster", "glusterServer": ",".join(map(str, servers)),
            "glusterVolume": volume}


def record_from_context(volume_id, context):
    """The record a node keeps of a volume it learns from a volume context."""
    canonical = context_of(dict(context))
    return Volume(volume_id, volume_id, "gluster", "", 0,
                  context=json.dumps(canonical, sort_keys=True))


def _mount_point(root, context):
    """Where the controller mounts the Gluster volume a context names."""
    servers = gluster.parse_servers(context["glusterServer"])
    name = f"{gluster.check_volume_name(context['glusterVolume'])}@{','.join(map(str, servers))}"
    return os.path.join(root, "gluster", name)


def volume_path(root, volume):
    return os.path.join(_mount_point(root, json.loads(volume.context)),
                        layout.VOLUME_ID.match(volume.id).group())


def _source(mount_point):
    """(servers, Gluster volume) named by a controller mount point."""
    volume, _, servers = os.path.basename(mount_point).partition("@")
    return gluster.parse_servers(servers), volume


def _parts(path):
    """(controller mount point, servers, Gluster volume, sub-directory) of a volume path."""
    mount_point, subdir = os.path.split(path)
    return (mount_point, *_source(mount_point), subdir)


def _glusterfs_at(path):
    real = os.path.realpath(path)
    return any(e.mountpoint == real and e.fstype == FS_TYPE for e in mounts.mountinfo())


class GlusterBackend:
    def __init__(self):
        self.glusterd = gluster.Management()
        # One management operation at a time: glusterd refuses a second quota
        # change on a volume while one runs, and the controller mount is shared.
        self._lock = threading.Lock()

    def use_glusterd_socket(self, path):
        self.glusterd = gluster.Management(path)

    # ------------------------------------------------------------ controller
    def _ensure_mounted(self, mount_point, servers, volume):
        if gluster.is_live_mount(mount_point):
            return
        if mounts.is_mountpoint(mount_point):       # client gone (ENOTCONN): mount again
            mounts.umount(mount_point)
        self.glusterd.check_volume(servers, volume)
        os.makedirs(mount_point, mode=0o700, exist_ok=True)
        try:
            gluster.mount(servers, volume, "", mount_point)
        except BaseException:
            os.rmdir(mount_point)
            raise

    def _release_if_unused(self, mount_point):
        """Unmount the controller's mount once no volume of ours is in it."""
        if not mounts.is_mountpoint(mount_point):
            return
        if not any(layout.is_volume_id(n) for n in os.listdir(mount_point)):
            mounts.umount(mount_point)
            os.rmdir(mount_point)

    def create(self, path, size, fs_type):
        self._create(path, size, lambda: None)

    def copy(self, source, path, size):
        """A clone: a new directory with its quota, filled with a copy of source."""
        def fill():
            self._ensure_mounted(*_parts(source)[:3])
            mounts.run("cp", "-a", "--", source + "/.", path)

        self._create(path, size, fill)

    def _create(self, path, size, fill):
        mount_point, servers, volume, subdir = _parts(path)
        with self._lock, _as_csi_errors():
            self._ensure_mounted(mount_point, servers, volume)
            try:
                os.mkdir(path)
                os.chmod(path, 0o777)  # fresh volumes are writable by pods running as any user
                self.glusterd.limit(volume, subdir, size)
                fill()
            except BaseException:
                self._remove(path, volume, subdir)
                self._release_if_unused(mount_point)
                raise

    def delete(self, path):
        mount_point, servers, volume, subdir = _parts(path)
        with self._lock, _as_csi_errors():
            self._ensure_mounted(mount_point, servers, volume)
            self._remove(path, volume, subdir)
            self._release_if_unused(mount_point)

    def _remove(self, path, volume, subdir):
        if os.path.isdir(path):
            self.glusterd.remove(volume, subdir)   # needs the directory: it names a path
            shutil.rmtree(path)

    def free_bytes(self, root, context):
        """Free space of the Gluster volume a context names (mounted for the
        look if the controller has no mount of it); 0 when it is unusable."""
        mount_point = _mount_point(root, context)
        with self._lock:
            try:
                self._ensure_mounted(mount_point, *_source(mount_point))
            except gluster.GlusterError:
                return 0
            try:
                st = os.statvfs(mount_point)
                return st.f_bavail * st.f_frsize
            finally:
                self._release_if_unused(mount_point)

    def grow(self, path, size):
        _, _, volume, subdir = _parts(path)
        with self._lock, _as_csi_errors():
            self.glusterd.limit(volume, subdir, size)

    # ------------------------------------------------------------------ node
    def stage(self, path, staging, access, fs_type, flags, format_blank=False):
        _, servers, volume, subdir = _parts(path)
        if gluster.is_live_mount(staging):
            if not _glusterfs_at(staging):
                raise mounts.TargetInUse(f"{staging} has another mount")
            return
        if mounts.is_mountpoint(staging) and _glusterfs_at(staging):
            mounts.umount(staging)                  # its client died: mount afresh
        with _as_csi_errors():
            gluster.mount(servers, volume, subdir, staging)

    def unstage(self, path, staging):
        if staging and _glusterfs_at(staging):
            mounts.umount(staging)

    def device(self, path):
        raise ValueError("gluster volumes have no block device")

    def can_expand_online(self, fs_type):
        return True

    def node_expand(self, path, staging, fs_type):
        """Nothing to do on the node: the quota was raised on the servers."""

    def problem(self, path, staging, access):
        if staging and not (gluster.is_live_mount(staging) and _glusterfs_at(staging)):
            return f"Gluster mount at {staging} is gone or its client does not answer"
        return ""
