"""`podplumb install`: write small executables into a CNI bin dir, one per plugin.

Without a daemon socket each executable is the Python launcher. With one, each is the native thin
client (podplumb/native/cni-client.c, compiled here with the system C compiler) and the Python
launcher goes beside it as `<name>.py`, for the client to exec when no daemon answers; without a C
compiler the Python launcher is installed as `<name>`, which asks the daemon itself.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from cni.invoke import MARKER   # how cni.invoke recognises our executables

# Executable name -> the module:attribute holding its skel.Plugin.
PLUGINS = {
    "bridge": "plugins.bridge.plugin:PLUGIN",
    "host-local": "plugins.host_local.plugin:PLUGIN",
    "portmap": "plugins.portmap.plugin:PLUGIN",
    "vxlan": "plugins.vxlan.plugin:PLUGIN",
    "loopback": "plugins.loopback.plugin:PLUGIN",
    "ptp": "plugins.ptp.plugin:PLUGIN",
    "static": "plugins.static.plugin:PLUGIN",
    "tuning": "plugins.tuning.plugin:PLUGIN",
    "sbr": "plugins.sbr.plugin:PLUGIN",
    "macvlan": "plugins.macvlan.plugin:PLUGIN",
    "bandwidth": "plugins.bandwidth.plugin:PLUGIN",
    "host-device": "plugins.host_device.plugin:PLUGIN",
    "firewall": "plugins.firewall.plugin:PLUGIN",
    "dhcp": "plugins.dhcp.plugin:PLUGIN",
}

CLIENT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "cni-client.c")
LAUNCHER_SUFFIX = ".py"
COMPILE_TIMEOUT = 120

_TEMPLATE = """#!{python} -IS
{marker}{module}
import sys
sys.path[:0] = [{code_root!r}]
from podplumb.launcher import run
run({module!r}, {socket!r}, {site_dir!r})
"""


class NoCompiler(Exception):
    pass


def install(bin_dir: str, daemon_socket: str | None = None, python: str = sys.executable,
            native: bool = True) -> list[str]:
    """Write the executables; with `daemon_socket` and `native`, the compiled client (if a compiler is
    here: else the Python launcher, and a line on stderr saying so)."""
    os.makedirs(bin_dir, exist_ok=True)
    client = None
    if daemon_socket and native:
        try:
            client = compile_client(daemon_socket)
        except NoCompiler as e:
            sys.stderr.write(f"podplumb install: {e}; installing the Python launcher instead\n")
    # Where our packages are (this checkout for an editable install, else site-packages), and the
    # site-packages dir whose .pth files and third-party packages a plugin run in-process needs.
    code_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    site_dir = sysconfig.get_path("purelib")
    written = []
    for name, module in PLUGINS.items():
        path = os.path.join(bin_dir, name)
        launcher = _TEMPLATE.format(python=python, marker=MARKER.decode(), module=module, code_root=code_root,
                                    site_dir=site_dir, socket=None if client else daemon_socket)
        if client:      # the launcher first: the client execs it
            _write(path + LAUNCHER_SUFFIX, launcher.encode())
            _write(path, client)
        else:
            _write(path, launcher.encode())
            _remove(path + LAUNCHER_SUFFIX)   # a native client's launcher from an earlier install
        written.append(path)
    return written


def _write(path: str, content: bytes):
    temp = f"{path}.podplumb-tmp"
    with open(temp, "wb") as f:
        f.write(content)
    os.chmod(temp, 0o755)
    os.replace(temp, path)   # atomic: a runtime never runs a half-written file


def _remove(path: str):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def compile_client(daemon_socket: str) -> bytes:
    """The native client for `daemon_socket`, compiled; NoCompiler when there is no C compiler."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc"]
    compiler = next(filter(None, map(shutil.which, names)), None)
    if not compiler:
        raise NoCompiler(f"no C compiler ({' or '.join(names)}) found")
    if not daemon_socket.isprintable() or any(c in daemon_socket for c in '"\\') or not daemon_socket.isascii():
        raise NoCompiler(f"the socket path {daemon_socket!r} cannot be compiled into the native client")
    with tempfile.TemporaryDirectory(prefix="podplumb-cc-") as work:
        output = os.path.join(work, "cni-client")
        # Static first: it starts without the dynamic loader (about 3 ms less a call here), and runs on a
        # host whose libc is older than the one it was built with (a DaemonSet's image).
        for static in (["-static"], []):
            proc = subprocess.run([compiler, "-O2", *static, "-o", output, f'-DPODPLUMB_SOCKET="{daemon_socket}"',
                                   CLIENT_SOURCE], capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
            if proc.returncode == 0:
                with open(output, "rb") as f:
                    return f.read()
        raise NoCompiler(f"{compiler} could not build the native client: {proc.stderr.strip()[-500:]}")
