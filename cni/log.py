"""Logs go to stderr, and to a file when PODPLUMB_LOG_FILE names one; never to stdout."""

import json
import logging
import sys
import time

FORMAT = "%(asctime)s %(levelname)s %(message)s"
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (RFC 3339, UTC), level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)

    def formatTime(self, record, datefmt=None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def formatter(form: str) -> logging.Formatter:
    """The formatter for --log-format `form` (text or json)."""
    return JsonFormatter() if form == "json" else logging.Formatter(FORMAT)


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
