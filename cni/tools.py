"""Finding the system tools a plugin runs (nft, ip). A runtime may run plugins with a bare
environment, and these tools live in sbin directories that a minimal PATH leaves out.
(No shutil.which: importing shutil costs every plugin call a few milliseconds.)"""

import functools
import os

_SYSTEM_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"


@functools.cache
def find(name: str) -> str | None:
    """The tool's path, searched on PATH and then the system directories; None when absent."""
    for directory in filter(None, (os.environ.get("PATH", "") + os.pathsep + _SYSTEM_PATH).split(os.pathsep)):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
