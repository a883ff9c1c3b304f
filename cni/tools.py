"""Finding the system tools a plugin runs (nft, ip). A runtime may run plugins with a bare
environment, and these tools live in sbin directories that a minimal PATH leaves out."""

import functools
import os
import shutil

_SYSTEM_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"


@functools.cache
def find(name: str) -> str | None:
    """The tool's path, searched on PATH and then the system directories; None when absent."""
    return shutil.which(name, path=os.pathsep.join(filter(None, (os.environ.get("PATH"), _SYSTEM_PATH))))
