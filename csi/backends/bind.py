"""Bind volumes: a directory in the state dir, bind-mounted where it is needed.

Size is accounted by the controller but not enforced here (no quotas).
"""

import os
import shutil

from csi import mounts


class BindBackend:
    def create(self, path, size, fs_type):
        os.mkdir(path)
        os.chmod(path, 0o777)  # fresh volumes are writable by pods running as any user

    def copy(self, source, path, size):
        mounts.copy_tree(source, path)

    def delete(self, path):
        if os.path.isdir(path):
            shutil.rmtree(path)

    def grow(self, path, size):
        """Nothing to grow: a directory has no size of its own."""

    def stage(self, path, staging, access, fs_type, flags, format_blank=False):
        if mounts.is_mountpoint(staging):
            if not mounts.same_file_system_root(staging, path):
                raise mounts.TargetInUse(f"{staging} has another mount")
            return
        mounts.bind_mount(path, staging, options=mounts.vfs_flags(flags))

    def unstage(self, path, staging):
        if staging and mounts.is_mountpoint(staging) and mounts.same_file_system_root(staging, path):
            mounts.umount(staging)

    def device(self, path):
        raise ValueError("bind volumes have no block device")

    def can_expand_online(self, fs_type):
        return True

    def node_expand(self, path, staging, fs_type):
        """Nothing to do on the node: the directory has no file system of its own."""

    def problem(self, path, staging, access):
        """Why the volume is abnormal, or "" when it is healthy."""
        if not os.path.isdir(path):
            return f"volume directory {path} is missing"
        if staging and not mounts.same_file_system_root(staging, path):
            return f"staging mount at {staging} is gone"
        return ""
