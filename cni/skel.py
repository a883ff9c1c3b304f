"""The dispatcher every plugin shares: (environment, stdin) -> (stdout bytes, exit code).

It never prints: the launcher and the node daemon decide where the bytes go.
"""

import json
import os
import sys
from collections.abc import Callable, Mapping

from cni import fields, limits, log, netconf, records, version as versions
from cni.errors import (CNIError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INTERNAL,
                        INVALID_ENVIRONMENT, IO_FAILURE, UNKNOWN_CONTAINER, INVALID_CONFIG)
from cni.result import to_version

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")



# Each CNI_* variable: the commands that require it.
_REQUIRED = {
    "CNI_CONTAINERID": ("ADD", "DEL", "CHECK"),
    "CNI_NETNS": ("ADD", "CHECK"),
    "CNI_IFNAME": ("ADD", "DEL", "CHECK"),
    "CNI_PATH": ("ADD", "DEL", "CHECK", "GC"),
}


class Request:
    """One CNI call. The classes a standalone call builds are plain classes, not dataclasses: each
    dataclass execs generated code at import, and `dataclasses` imports inspect, ast and tokenize
    (together 15-20 ms of a call's start-up on a slow CPU)."""
    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path", "config", "stdin", "version", "env")

    def __init__(self, command: str, container_id: str, netns: str, ifname: str,
                 args: dict,            # CNI_ARGS, parsed
                 path: tuple,           # CNI_PATH, split
                 config: dict,          # the network config, parsed
                 stdin: bytes,          # the network config, as received
                 version: str,          # the cniVersion the answer is printed in
                 env: Mapping):
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path
        self.config = config
        self.stdin = stdin
        self.version = version
        self.env = env

    def replace(self, **changes) -> "Request":
        """A copy with the fields named in `changes` set to new values."""
        return Request(**{**{name: getattr(self, name) for name in self.__slots__}, **changes})

    @property
    def network(self) -> str:
        return self.config.get("name", "")

    def runtime_config(self) -> dict:
        rc = self.config.get("runtimeConfig")
        return rc if isinstance(rc, dict) else {}


class Plugin:
    """A plugin's commands, as each plugin module's PLUGIN."""
    __slots__ = ("name", "add", "delete", "check", "status", "gc", "versions", "config_fields")

    def __init__(self, name: str, add: Callable[[Request], dict], delete: Callable[[Request], None],
                 check: Callable[[Request], None], status: Callable[[Request], None], gc: Callable[[Request], None],
                 versions: tuple = versions.SUPPORTED,
                 config_fields: dict | None = None):     # its own keys: see cni.netconf
        self.name = name
        self.add = add
        self.delete = delete
        self.check = check
        self.status = status
        self.gc = gc
        self.versions = versions
        self.config_fields = config_fields or {}


def load_plugin(module: str) -> Plugin:
    """The Plugin named "package.module:ATTRIBUTE" (ATTRIBUTE defaults to PLUGIN)."""
    name, _, attr = module.partition(":")
    __import__(name)      # importlib.import_module would cost every call the import of importlib and warnings
    return getattr(sys.modules[name], attr or "PLUGIN")


def run(plugin: Plugin, env: Mapping[str, str], stdin: bytes) -> tuple[bytes, int]:
    """Serve one CNI call. Never raises; errors become the spec's error object."""
    log.configure(env)
    reply_version = versions.CURRENT
    command = env.get("CNI_COMMAND", "")
    try:
        if command == "VERSION":
            return versions.version_reply(stdin, plugin.versions), 0
        request = parse_request(env, stdin, plugin.config_fields)
        reply_version = request.version
        if not log.quiet():
            log.logger().info("%s %s container=%s netns=%s ifname=%s", plugin.name, command,
                              request.container_id, request.netns, request.ifname)
        return _serve(plugin, request), 0
    except CNIError as e:
        log.logger().error("%s %s failed: code %d: %s", plugin.name, command or "?", e.code, e)
        return _dump(e.to_dict(reply_version)), 1
    except OSError as e:  # a file or path the config names that the system refuses (ENAMETOOLONG, EACCES…)
        log.logger().error("%s %s failed:\n%s", plugin.name, command or "?", _traceback())
        err = CNIError(IO_FAILURE, f"{plugin.name}: {e.strerror or 'I/O error'}", str(e))
        return _dump(err.to_dict(reply_version)), 1
    except Exception as e:  # a bug: report it as the spec's error object, trace on stderr only
        log.logger().error("%s %s crashed:\n%s", plugin.name, command or "?", _traceback())
        err = CNIError(INTERNAL, f"internal error in {plugin.name}", f"{type(e).__name__}: {e}")
        return _dump(err.to_dict(reply_version)), 1


def _traceback() -> str:
    import traceback    # a failure's only: logging, which the failure is logged with, imports it anyway
    return traceback.format_exc()


def _serve(plugin: Plugin, request: Request) -> bytes:
    command = request.command
    if command == "ADD":
        result = plugin.add(request)
        records.remember(request, result)
        return _dump(to_version(result, request.version))
    if command == "DEL":
        plugin.delete(request)
        records.forget(request)
    elif command == "CHECK":
        _require_version(request, "0.4.0", "CHECK")
        plugin.check(request)
    elif command == "STATUS":
        _require_version(request, "1.1.0", "STATUS")
        plugin.status(request)
    elif command == "GC":
        _require_version(request, "1.1.0", "GC")
        plugin.gc(request)
        valid = request.config.get("cni.dev/valid-attachments")
        if isinstance(valid, list):
            records.prune(request, {(a.get("containerID"), a.get("ifname")) for a in valid if isinstance(a, dict)})
    return b""


def _require_version(request: Request, minimum: str, command: str):
    if not versions.at_least(request.version, minimum):
        raise CNIError(INCOMPATIBLE_VERSION, f"config version {request.version} does not allow {command}",
                       f"{command} needs cniVersion {minimum} or later")


def parse_request(env: Mapping[str, str], stdin: bytes, config_fields: dict | None = None) -> Request:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CNIError(INVALID_ENVIRONMENT, "CNI_COMMAND is missing or unknown" if not command
                       else f"unknown CNI_COMMAND {command!r}", f"expected one of {', '.join(COMMANDS)}")
    missing = [name for name, needed_by in _REQUIRED.items() if command in needed_by and not env.get(name)]
    if missing:
        raise CNIError(INVALID_ENVIRONMENT, f"required environment variables missing: {', '.join(missing)}",
                       f"{command} needs {', '.join(n for n, c in _REQUIRED.items() if command in c)}")
    container_id = env.get("CNI_CONTAINERID", "")
    if container_id and not fields.PLAIN_NAME.fullmatch(container_id):
        raise CNIError(INVALID_ENVIRONMENT, f"invalid CNI_CONTAINERID {container_id!r}",
                       fields.PLAIN_NAME_RULE)
    ifname = env.get("CNI_IFNAME", "")
    problem = fields.ifname_problem(ifname) if ifname else None
    if problem:
        raise CNIError(INVALID_ENVIRONMENT, f"invalid CNI_IFNAME {ifname!r}", problem)
    config = _parse_config(stdin, config_fields)
    version = versions.choose(config)
    netns = env.get("CNI_NETNS", "")
    if netns:
        _check_netns(netns, command)
    return Request(command=command, container_id=container_id, netns=netns, ifname=ifname,
                   args=parse_cni_args(env.get("CNI_ARGS", "")),
                   path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
                   config=config, stdin=stdin, version=version, env=dict(env))


def _parse_config(stdin: bytes, config_fields: dict | None) -> dict:
    config = decode_json(stdin)
    if not isinstance(config, dict):
        raise CNIError(DECODE_FAILURE, "network config must be a JSON object", f"got {type(config).__name__}")
    config = netconf.network_config(config, config_fields)
    name = config.get("name")
    if name is not None and (not isinstance(name, str) or not fields.PLAIN_NAME.fullmatch(name)):
        raise CNIError(INVALID_CONFIG, f"invalid network name {name!r}",
                       fields.PLAIN_NAME_RULE)
    return config


def decode_json(data: bytes):
    """JSON within the size and depth bounds of cni.limits."""
    limits.check_config_size(data)
    try:
        value = json.loads(data)
    except RecursionError:
        raise CNIError(DECODE_FAILURE, "network config is nested too deeply",
                       f"at most {limits.MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CNIError(DECODE_FAILURE, "network config is not valid JSON", str(e)) from None
    limits.check_depth(value)
    return value


def _check_netns(netns: str, command: str):
    """Refuse, before anything is touched, a namespace that is missing (ADD/CHECK) or our own."""
    try:
        target = os.stat(netns)
    except OSError as e:
        if command == "DEL":
            return
        raise CNIError(UNKNOWN_CONTAINER, f"network namespace {netns} does not exist", e.strerror) from None
    own = os.stat("/proc/self/ns/net")
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_NETNS {netns} is the plugin's own network namespace",
                       "refusing to configure the host namespace as a container")


def parse_cni_args(raw: str) -> dict:
    """CNI_ARGS: 'K1=V1;K2=V2'."""
    args = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(INVALID_ENVIRONMENT, f"invalid CNI_ARGS pair {pair!r}", "expected KEY=VALUE")
        args[key] = value
    return args


def _dump(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()
