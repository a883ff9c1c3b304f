"""What `podplumb install` replaces in a CNI bin dir, kept aside so that `podplumb install --restore`
can put it back: same-named plugins of somebody else (the reference Go plugins on a real node).

A kept file goes to `<backup dir>/<name>`; our own executables (an earlier install) are never kept.
"""

import os
import shutil

from cni.invoke import our_module
from podplumb.install import LAUNCHER_SUFFIX, PLUGINS

BACKUP_DIR_NAME = ".podplumb-replaced"   # not a plugin type: types start with a letter or digit


def default_backup_dir(bin_dir: str) -> str:
    return os.path.join(bin_dir, BACKUP_DIR_NAME)


def is_ours(path: str) -> bool:
    """Our Python launcher, or our native client (its launcher lies beside it)."""
    return bool(our_module(path) or our_module(path + LAUNCHER_SUFFIX))


def survey(bin_dir: str) -> dict[str, str]:
    """name -> 'new', 'ours' (an earlier podplumb install) or 'foreign' for every plugin we install."""
    states = {}
    for name in PLUGINS:
        path = os.path.join(bin_dir, name)
        states[name] = "new" if not os.path.lexists(path) else "ours" if is_ours(path) else "foreign"
    return states


def keep(bin_dir: str, backup_dir: str, names) -> list[str]:
    """Copy each named foreign executable into backup_dir (a newer one replaces an older copy)."""
    kept = []
    for name in names:
        os.makedirs(backup_dir, mode=0o755, exist_ok=True)
        target = os.path.join(backup_dir, name)
        shutil.copy2(os.path.join(bin_dir, name), target + ".podplumb-tmp", follow_symlinks=True)
        os.replace(target + ".podplumb-tmp", target)
        kept.append(target)
    return kept


def restore(bin_dir: str, backup_dir: str, out=print) -> int:
    """Put every kept executable back and remove ours that replaced nothing. 0, or 1 when some file
    could not be restored."""
    code = 0
    for name in PLUGINS:
        path, kept = os.path.join(bin_dir, name), os.path.join(backup_dir, name)
        try:
            if os.path.exists(kept):
                shutil.copy2(kept, path + ".podplumb-tmp")
                os.replace(path + ".podplumb-tmp", path)
                _remove(path + LAUNCHER_SUFFIX)
                os.unlink(kept)
                out(f"  {name:12} restored from {kept}")
            elif os.path.lexists(path) and is_ours(path):
                _remove(path + LAUNCHER_SUFFIX)
                os.unlink(path)
                out(f"  {name:12} removed (podplumb's; nothing was replaced)")
        except OSError as e:
            out(f"  {name:12} NOT restored: {e}")
            code = 1
    try:
        os.rmdir(backup_dir)
    except OSError:
        pass   # absent, or holds something we did not put there
    return code


def _remove(path: str):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
