"""Calling a delegate plugin (IPAM): in-process when it is one of ours, else exec it from CNI_PATH."""

import json
import os

from cni import fields, log, netconf, result as results, skel
from cni.errors import CNIError, INVALID_CONFIG, IO_FAILURE, DECODE_FAILURE, TRY_AGAIN_LATER
from cni.skel import Request

# Our installed executables carry this line; it names the module that serves them.
MARKER = b"# podplumb-plugin: "
EXEC_TIMEOUT = 60


def find(name: str, path) -> str:
    if not fields.PLAIN_NAME.fullmatch(name):
        raise CNIError(INVALID_CONFIG, f"invalid plugin type {name!r}", fields.PLAIN_NAME_RULE)
    for directory in path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(INVALID_CONFIG, f"plugin {name!r} not found on CNI_PATH", f"searched {':'.join(path)}")


def our_module(executable: str) -> str | None:
    """The module behind one of our launchers, or None for anybody else's executable. A compiled
    executable is ours when the Python launcher installed beside it (`<name>.py`) is."""
    try:
        with open(executable, "rb") as f:
            head = f.read(1024)
    except OSError:
        return None
    for line in head.splitlines():
        if line.startswith(MARKER):
            return line[len(MARKER):].decode().strip()
    if head.startswith(b"\x7fELF") and not executable.endswith(".py"):
        return our_module(executable + ".py")
    return None


def delegate(request: Request, command: str | None = None):
    """Run the config's IPAM plugin for `command` (default: the request's). ADD returns a result."""
    ipam = request.config.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str):
        raise CNIError(INVALID_CONFIG, "missing ipam.type", "this plugin needs an IPAM plugin")
    command = command or request.command
    executable = find(ipam["type"], request.path)
    module = our_module(executable)
    if module:
        return _in_process(module, request.replace(command=command))
    return _exec(executable, request, command)


def delegate_if_configured(request: Request, command: str | None = None):
    """`delegate`, for plugins whose IPAM is optional: a config without one has no IPAM to run (None)."""
    if fields.ipam_type(request.config) is not None:
        return delegate(request, command)
    return None


def add_optional_ipam(request: Request, undo) -> tuple[list, list, dict | None]:
    """ADD through the config's IPAM plugin, if it names one; the lease is released if `undo` rolls back.

    Returns the pod's ips (all on its one interface, index 0), routes and dns; nothing without IPAM.
    """
    ipam = delegate_if_configured(request, "ADD")
    if ipam is None:
        return [], [], None
    undo.push("IPAM lease", lambda: delegate(request, "DEL"))
    if not ipam.get("ips"):
        raise CNIError(INVALID_CONFIG, "IPAM plugin returned no IP address")
    return [dict(ip, interface=0) for ip in ipam["ips"]], ipam.get("routes") or [], ipam.get("dns")


def _in_process(module: str, request: Request):
    plugin = skel.load_plugin(module)
    if plugin.config_fields:   # the delegate reads the config's keys as its own decoder would
        request = request.replace(config=netconf.network_config(request.config, plugin.config_fields))
    handler = {"ADD": plugin.add, "DEL": plugin.delete, "CHECK": plugin.check,
               "STATUS": plugin.status, "GC": plugin.gc}[request.command]
    return handler(request)


def _exec(executable: str, request: Request, command: str):
    import subprocess        # only for a plugin not ours: our own run in-process, without its import cost
    env = dict(request.env, CNI_COMMAND=command)
    log.logger().info("exec %s %s", executable, command)
    try:
        proc = subprocess.run([executable], input=request.stdin, env=env, capture_output=True,
                              timeout=EXEC_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CNIError(TRY_AGAIN_LATER, f"{executable} {command} timed out after {EXEC_TIMEOUT}s") from None
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot run {executable}", e.strerror) from None
    if proc.stderr:
        log.logger().info("%s: %s", executable, proc.stderr.decode(errors="replace").strip())
    output = proc.stdout.strip()
    if proc.returncode != 0:
        try:
            raise CNIError.from_dict(json.loads(output))
        except (ValueError, AttributeError):
            raise CNIError(IO_FAILURE, f"{executable} {command} failed (exit {proc.returncode})",
                           proc.stderr.decode(errors="replace")[-2000:]) from None
    if command != "ADD":
        return None
    try:
        data = json.loads(output)
    except ValueError as e:
        raise CNIError(DECODE_FAILURE, f"{executable} printed an invalid result", str(e)) from None
    return results.from_any(data, request.version)
