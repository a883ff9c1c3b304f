"""Logs go to stderr, and to a file when PODPLUMB_LOG_FILE names one; never to stdout.

Plugin code logs through `logger()`. A standalone call at the default level (WARNING, no log
file) mostly has nothing to say, so it imports `logging` (about 5 ms of its start-up on a slow CPU)
only when it logs something.
"""

import sys

FORMAT = "%(asctime)s %(levelname)s %(message)s"
FORMATS = ("text", "json")
INFO, WARNING = 20, 30
_LEVELS = {"CRITICAL": 50, "FATAL": 50, "ERROR": 40, "WARN": 30, "WARNING": 30, "INFO": 20, "DEBUG": 10,
           "NOTSET": 0}    # logging's own names

_pending_env = None      # a call's environment whose logging is set up by the first logger()


def formatter(form: str):
    """The formatter for --log-format `form` (text or json)."""
    import logging
    from cni.jsonlog import JsonFormatter
    return JsonFormatter() if form == "json" else logging.Formatter(FORMAT)


def level(name: str) -> int:
    """A logging level from its name; an unknown name means WARNING rather than an error."""
    return _LEVELS.get(str(name).upper(), WARNING)


def configure(env):
    """At the start of a call: its logs go to stderr from PODPLUMB_LOG_LEVEL (default WARNING) and
    to PODPLUMB_LOG_FILE from INFO. Once per process: a "podplumb" logger with handlers already (an
    earlier call, or the node daemon, which sets up its own logging and captures each request's logs
    itself) is left alone. A call that would log nothing below WARNING, in a process that has not
    imported `logging`, leaves the set-up to its first `logger()`."""
    global _pending_env
    later = "logging" not in sys.modules and not _below_warning(env)
    _pending_env = env if later else None
    if not later:
        _set_up(env)


def quiet() -> bool:
    """Whether INFO lines go nowhere (then `logging` may not be imported yet: see configure)."""
    return _pending_env is not None


def logger():
    """The "podplumb" logger, set up for the call if it is not yet."""
    global _pending_env
    if _pending_env is not None:
        env, _pending_env = _pending_env, None
        _set_up(env)
    import logging
    return logging.getLogger("podplumb")


def _below_warning(env) -> bool:
    return bool(env.get("PODPLUMB_LOG_FILE")) or level(env.get("PODPLUMB_LOG_LEVEL", "WARNING")) < WARNING


def _set_up(env):
    import logging
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
