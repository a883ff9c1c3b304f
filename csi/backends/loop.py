"""Loop volumes: a sparse file attached to a loop device while it is staged.

With mount access the file system (ext4 or xfs) is mounted at the staging
path; with block access the device node itself is published.
"""

import os

from csi import mounts


class LoopBackend:
    def create(self, path, size, fs_type):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        if fs_type:
            mounts.mkfs(fs_type, path)

    def copy(self, source, path, size):
        mounts.copy_file(source, path)
        if size > os.path.getsize(path):
            os.truncate(path, size)  # the file system is grown when next staged

    def delete(self, path):
        if os.path.exists(path):
            for device in mounts.loops_backed_by(path):
                mounts.loop_detach(device)
            os.unlink(path)

    def grow(self, path, size):
        if size > os.path.getsize(path):
            os.truncate(path, size)
        for device in mounts.loops_backed_by(path):
            mounts.loop_refresh(device)

    def attached(self, path):
        """The read-write loop device of path, or ""."""
        devices = [d for d in mounts.loops_backed_by(path) if not mounts.loop_is_readonly(d)]
        return devices[0] if devices else ""

    def device(self, path):
        """The read-write loop device of path, attaching one if there is none."""
        return self.attached(path) or mounts.loop_attach(path)

    def readonly_device(self, path):
        """A new read-only loop device: a read-only mount does not stop writes
        through a device node, a read-only device does. One per publication."""
        return mounts.loop_attach(path, readonly=True)

    def release_readonly(self, path, device):
        """Detach a read-only device made by readonly_device()."""
        if device in mounts.loops_backed_by(path) and mounts.loop_is_readonly(device):
            mounts.loop_detach(device)

    def stage(self, path, staging, access, fs_type, flags, format_blank=False):
        """Attach; for mount access also grow the file system if needed and mount
        it; with format_blank, a device without file system gets fs_type first."""
        device = self.device(path)
        if access == "block":
            return
        if mounts.is_mountpoint(staging):
            if mounts.mounted_device(staging) != mounts.device_number(device):
                raise mounts.TargetInUse(f"{staging} has another mount")
            return
        found = mounts.fs_type_of(device)
        if not found and format_blank:
            mounts.mkfs(fs_type, device)
            found = fs_type
        if found != fs_type:
            raise mounts.CommandError(["blkid", device], 1,
                                      f"expected {fs_type}, found {found or 'no file system'}")
        if fs_type == "ext4":
            mounts.grow_ext4_offline(device)
        # Clones and restored snapshots share the source's xfs UUID, which xfs
        # refuses to mount twice unless told to ignore it.
        options = list(flags) + (["nouuid"] if fs_type == "xfs" else [])
        mounts.mount(device, staging, fs_type, options)
        if fs_type == "xfs":
            mounts.grow_fs_online(fs_type, device, staging)   # xfs only grows when mounted

    def unstage(self, path, staging):
        device = self.attached(path)
        if staging and mounts.is_mountpoint(staging) and device and \
                mounts.mounted_device(staging) == mounts.device_number(device):
            mounts.umount(staging)
        for device in mounts.loops_backed_by(path):
            mounts.loop_detach(device)

    def can_expand_online(self, fs_type):
        return fs_type != "ext4" or mounts.can_grow_ext4_online()

    def node_expand(self, path, staging, fs_type):
        """Refresh the loop device size and grow a mounted file system into it."""
        device = self.device(path)
        mounts.loop_refresh(device)
        if fs_type and staging:
            mounts.grow_fs_online(fs_type, device, staging)

    def problem(self, path, staging, access):
        if not os.path.isfile(path):
            return f"backing file {path} is missing"
        device = self.attached(path)
        if staging and not device:
            return "loop device is detached"
        if staging and access == "mount" and (
                not mounts.is_mountpoint(staging)
                or mounts.mounted_device(staging) != mounts.device_number(device)):
            return f"staging mount at {staging} is gone"
        return ""
