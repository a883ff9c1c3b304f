"""Kernel mechanics: mounts (via /proc/self/mountinfo), loop devices, file systems.

A failed external command raises CommandError; an unsupported file system
raises ValueError, and the system calls raise OSError as usual. TargetInUse is
for callers that find a mount they did not expect. Nothing here knows about
CSI or gRPC; "ensure"-style callers decide what is idempotent.
"""

import contextlib
import glob
import logging
import os
import re
import stat
import subprocess
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

FS_TYPES = ("ext4", "xfs")
XFS_MIN_SIZE = 300 << 20            # mkfs.xfs refuses smaller file systems


class CommandError(Exception):
    """An external command failed."""

    def __init__(self, argv, returncode, stderr):
        super().__init__(f"{' '.join(argv)}: exit {returncode}: {stderr.strip()}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class TargetInUse(Exception):
    """Something other than what we would mount is already mounted at a path."""


def run(*argv, check=True):
    log.debug("run %s", " ".join(argv))
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise CommandError(list(argv), proc.returncode, proc.stderr or proc.stdout)
    return proc


# ----------------------------------------------------------------- mounts

@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field):
    # mountinfo writes space, tab, newline and backslash as \ooo
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def mountinfo():
    entries = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.rstrip("\n").split(" - ", 1)
            fields = left.split(" ")
            entries.append(MountEntry(_unescape(fields[4]), right.split(" ")[0]))
    return entries


def is_mountpoint(path):
    real = os.path.realpath(path)
    return any(e.mountpoint == real for e in mountinfo())


def fs_type_at(path):
    """File system type of the topmost mount at path, or "" when none is there."""
    real = os.path.realpath(path)
    found = [e.fstype for e in mountinfo() if e.mountpoint == real]
    return found[-1] if found else ""


def mounts_under(directory):
    """Mount points at or below directory, deepest first."""
    real = os.path.realpath(directory)
    found = [e.mountpoint for e in mountinfo()
             if e.mountpoint == real or e.mountpoint.startswith(real.rstrip("/") + "/")]
    return sorted(set(found), key=len, reverse=True)


def mount(source, target, fstype=None, options=()):
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    run(*argv, "--", source, target)


# Per-mount flags that a bind mount can apply (file-system options cannot).
VFS_FLAGS = frozenset({
    "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "noatime", "atime",
    "nodiratime", "diratime", "relatime", "norelatime", "strictatime", "nostrictatime",
})


def vfs_flags(flags):
    return [f for f in flags if f in VFS_FLAGS]


# File-system options a CO may ask for on top of VFS_FLAGS. Anything else
# (loop, bind, remount, X-mount.*, offset=, helper=, errors=panic ...) could
# stack devices, move mounts, or take the node down, and is refused.
FS_OPTIONS = frozenset({
    "defaults", "sync", "async", "dirsync", "lazytime", "nolazytime", "discard", "nodiscard",
    "iversion", "noiversion", "mand", "nomand", "barrier", "nobarrier", "nouuid",
    "data=ordered", "data=writeback", "data=journal", "errors=continue", "errors=remount-ro",
    "noauto_da_alloc", "auto_da_alloc", "user_xattr", "nouser_xattr", "acl", "noacl",
    "inode64", "inode32", "largeio", "nolargeio", "wsync", "grpid", "nogrpid",
})
_COMMIT = re.compile(r"commit=[0-9]{1,5}\Z")


def allowed_flag(flag):
    return flag in VFS_FLAGS or flag in FS_OPTIONS or bool(_COMMIT.match(flag))


def bind_mount(source, target, readonly=False, options=()):
    """Bind source onto target, then apply ro and per-mount flags by a remount."""
    run("mount", "--bind", "--", source, target)
    extra = (["ro"] if readonly else []) + list(options)
    if extra:
        try:
            run("mount", "-o", ",".join(["remount", "bind"] + extra), "--", target)
        except CommandError:
            umount(target)
            raise


def umount(target):
    """Unmount every mount stacked on target; a target that is not mounted is fine."""
    for _ in range(16):
        if not is_mountpoint(target):
            return
        run("umount", "--", target)
    raise CommandError(["umount", target], 1, "still mounted after 16 unmounts")


def same_file_system_root(path, reference):
    """True when path shows the same inode as reference (a bind mount of it)."""
    try:
        a, b = os.stat(path), os.stat(reference)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def mounted_device(path):
    """st_dev of the file system at path, as (major, minor)."""
    st = os.stat(path)
    return os.major(st.st_dev), os.minor(st.st_dev)


def device_number(device):
    st = os.stat(device)
    return os.major(st.st_rdev), os.minor(st.st_rdev)


# ------------------------------------------------------------ loop devices

def loop_devices():
    """{device: backing file} for every attached loop device (read from sysfs)."""
    result = {}
    for back_file in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(back_file) as f:
                back = f.read().rstrip("\n")
        except OSError:
            continue  # detached meanwhile
        result["/dev/" + back_file.split("/")[3]] = back.removesuffix(" (deleted)")
    return result


def loops_backed_by(path):
    real = os.path.realpath(path)
    return sorted(d for d, back in loop_devices().items() if back == real)


def loop_attach(path, readonly=False):
    ro = ["--read-only"] if readonly else []
    return run("losetup", "--find", "--show", *ro, "--", path).stdout.strip()


def loop_is_readonly(device):
    try:
        with open(f"/sys/block/{os.path.basename(device)}/ro") as f:
            return f.read().strip() == "1"
    except FileNotFoundError:
        return False


def block_device_of(path):
    """"/dev/NAME" of the block device node at path, or "" when path is not one."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return ""
    link = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return "/dev/" + os.path.basename(os.path.realpath(link))


DETACH_WAIT_SECONDS = 10


def loop_detach(device):
    """Detach and wait until the kernel has let go of the device.

    While any opener remains (typically a copy of our mount in another mount
    namespace) the kernel only marks the device for auto-clear; attaching the
    file again meanwhile would give a second device over live data, so this
    fails instead and the caller's RPC is retried later.
    """
    run("losetup", "--detach", device, check=False)
    backing = f"/sys/block/{os.path.basename(device)}/loop/backing_file"
    deadline = time.monotonic() + DETACH_WAIT_SECONDS
    while os.path.exists(backing):
        if time.monotonic() > deadline:
            raise CommandError(["losetup", "--detach", device], 1,
                               "device still in use (mounted in another mount namespace?); "
                               "the kernel detaches it when the last user lets go")
        time.sleep(0.05)


def loop_refresh(device):
    run("losetup", "--set-capacity", device)


def block_size(device):
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


# ------------------------------------------------------------ file systems

def fs_type_of(path):
    """The file system found on a file or device, or "" when there is none."""
    proc = run("blkid", "--probe", "--output", "value", "--match-tag", "TYPE", "--", path,
               check=False)
    if proc.returncode == 2:       # nothing found
        return ""
    if proc.returncode != 0:
        raise CommandError(["blkid", path], proc.returncode, proc.stderr)
    return proc.stdout.strip()


def mkfs(fs_type, path):
    if fs_type == "ext4":
        run("mkfs.ext4", "-q", "-F", "-m", "0", "--", path)
    elif fs_type == "xfs":
        run("mkfs.xfs", "-q", "-f", "--", path)
    else:
        raise ValueError(f"unsupported file system {fs_type!r}")


CAP_SYS_RESOURCE = 24


def can_grow_ext4_online():
    """Online ext4 growth (an ioctl) needs CAP_SYS_RESOURCE, which some containers drop."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def ext4_bytes(device):
    """Size of the ext4 file system on device, from its superblock."""
    fields = {}
    for line in run("dumpe2fs", "-h", device).stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return int(fields["Block count"]) * int(fields["Block size"])


def grow_ext4_offline(device):
    """Grow an unmounted ext4 file system to its device when the device is larger."""
    if ext4_bytes(device) >= block_size(device):
        return
    proc = run("e2fsck", "-f", "-p", device, check=False)
    if proc.returncode not in (0, 1):        # 1: errors corrected
        raise CommandError(["e2fsck", "-f", "-p", device], proc.returncode,
                           proc.stdout + proc.stderr)
    run("resize2fs", device)


def grow_fs_online(fs_type, device, mountpoint):
    """Grow a mounted file system to fill its device."""
    if fs_type == "ext4":
        run("resize2fs", device)
    elif fs_type == "xfs":
        run("xfs_growfs", mountpoint)
    else:
        raise ValueError(f"unsupported file system {fs_type!r}")


def freeze(mountpoint):
    run("fsfreeze", "--freeze", mountpoint)


def thaw(mountpoint, check=True):
    run("fsfreeze", "--unfreeze", mountpoint, check=check)


@contextlib.contextmanager
def frozen(mountpoint):
    """Freeze a mounted file system for the body; thaw it afterwards, also on failure."""
    freeze(mountpoint)
    try:
        yield
    finally:
        thaw(mountpoint)


def copy_tree(source, target):
    """Copy a directory's content (target must not exist), sharing blocks when possible."""
    run("cp", "-a", "--reflink=auto", "--", source, target)


def copy_file(source, target):
    """Copy a (sparse) file, sharing blocks when the file system can reflink."""
    run("cp", "--reflink=auto", "--sparse=always", "--", source, target)


# ----------------------------------------------------------------- cleanup

def release_under(directory):
    """Unmount everything mounted under directory and detach loop devices whose
    backing file is under it. For tests and the demo: leave nothing behind."""
    real = os.path.realpath(directory).rstrip("/") + "/"
    for point in mounts_under(directory):
        run("umount", "--lazy", "--", point, check=False)
    for device, back in loop_devices().items():
        if back.startswith(real):
            run("losetup", "--detach", device, check=False)
