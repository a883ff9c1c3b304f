"""Small state files written so that a reader never sees half of one."""

import os


def replace(path: str, text: str):
    """Write `text` to a temporary file beside `path`, then rename it over `path` (atomic)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = f"{path}.tmp-{os.getpid()}"
    with open(temp, "w") as f:
        f.write(text)
    os.replace(temp, path)
