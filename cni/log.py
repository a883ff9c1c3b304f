"""Logs go to stderr, and to a file when PODPLUMB_LOG_FILE names one; never to stdout."""

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(message)s"


def level(name: str) -> int:
    """A logging level from its name; an unknown name means WARNING rather than an error."""
    value = logging.getLevelName(str(name).upper())
    return value if isinstance(value, int) else logging.WARNING


def configure(env):
    """Once per process: a no-op when the podplumb logger has handlers already (an earlier call,
    or the node daemon, which sets up its own logging and captures each request's logs itself)."""
    root = logging.getLogger("podplumb")
    if root.handlers:
        return
    root.setLevel(level(env.get("PODPLUMB_LOG_LEVEL", "WARNING")))
    fmt = logging.Formatter(FORMAT)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    if env.get("PODPLUMB_LOG_FILE"):
        try:
            file_handler = logging.FileHandler(env["PODPLUMB_LOG_FILE"])
        except OSError as e:
            root.warning("cannot open log file %s: %s", env["PODPLUMB_LOG_FILE"], e)
        else:
            file_handler.setFormatter(fmt)
            file_handler.setLevel("INFO")
            root.addHandler(file_handler)
            root.setLevel(min(root.level, logging.INFO))
