"""tmpfs inline volumes: memory-backed, mounted straight at the pod's target.

The size is a mount option, so the kernel enforces it (ENOSPC beyond it).
Nothing lives on disk: the content goes with the unmount (or a reboot).
"""

from csi import mounts

MODE = "0777"   # as an emptyDir: writable by pods running as any user


class TmpfsBackend:
    def mount(self, target, size, flags, readonly=False):
        if mounts.is_mountpoint(target):
            if mounts.fs_type_at(target) != "tmpfs":
                raise mounts.TargetInUse(f"{target} has another mount")
            return
        options = [f"size={size}", f"mode={MODE}", *mounts.vfs_flags(flags)]
        mounts.mount("tmpfs", target, "tmpfs", options + (["ro"] if readonly else []))

    def unmount(self, target):
        if mounts.is_mountpoint(target) and mounts.fs_type_at(target) == "tmpfs":
            mounts.umount(target)
