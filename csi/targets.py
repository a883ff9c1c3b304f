"""Where the CO may have the driver mount, and what may already stand there.

Staging and target paths must lie under the kubelet dir, never inside the
driver's state dir nor above it. A target that exists is used only when it
holds nothing: an empty directory (mount access) or an empty regular file
(block access). Anything else - data, a symlink, a FIFO, a device - is
refused and left exactly as it was, and the driver removes only what it
could have made itself: an empty directory or an empty regular file.
"""

import errno
import logging
import os
import stat

log = logging.getLogger(__name__)


class UnsafeTarget(Exception):
    """A path the driver must not mount on, create or remove."""


def _inside(path, root):
    return path.startswith(root.rstrip("/") + "/")


def check_location(path, what, kubelet_dir, state_dir):
    """path (absolute, canonical) lies strictly under kubelet_dir and neither
    inside the state dir nor an ancestor of it."""
    kubelet = os.path.realpath(kubelet_dir)
    state = os.path.realpath(state_dir)
    if not _inside(path, kubelet):
        raise UnsafeTarget(f"{what} {path!r} is not under the kubelet dir {kubelet} "
                           "(see --kubelet-dir)")
    if path == state or _inside(path, state) or _inside(state, path):
        raise UnsafeTarget(f"{what} {path!r} overlaps the driver's state dir {state}")
    return path


def _kind(mode):
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "of an unknown type"


def check_free(path, access):
    """Nothing of value stands at path, which is not a mount point: it is
    absent, or an empty directory (mount) or an empty regular file (block)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if access == "mount" and stat.S_ISDIR(st.st_mode):
        if os.listdir(path):
            raise UnsafeTarget(f"{path} is a directory that is not empty")
        return
    if access == "block" and stat.S_ISREG(st.st_mode):
        if st.st_size:
            raise UnsafeTarget(f"{path} is a regular file that is not empty")
        return
    wanted = "an empty directory" if access == "mount" else "an empty regular file"
    raise UnsafeTarget(f"{path} exists and is {_kind(st.st_mode)}, not {wanted}")


def make(path, access):
    """Create the directory (mount) or file (block) to mount on, if absent."""
    if access == "mount":
        os.makedirs(path, exist_ok=True)
    elif not os.path.lexists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


def remove(path):
    """Remove an empty directory or empty regular file at an unmounted path;
    leave anything else (it is not ours) and say so in the log."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(path)
            return
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(path)
            return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise
    log.warning("left %s in place: it holds something the driver did not make", path)
