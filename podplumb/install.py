"""`podplumb install`: write small executables into a CNI bin dir, one per plugin."""

import os
import sys
import sysconfig

from cni.invoke import MARKER   # how cni.invoke recognises our executables

# Executable name -> the module:attribute holding its skel.Plugin.
PLUGINS = {
    "bridge": "plugins.bridge.plugin:PLUGIN",
    "host-local": "plugins.host_local.plugin:PLUGIN",
    "portmap": "plugins.portmap.plugin:PLUGIN",
    "vxlan": "plugins.vxlan.plugin:PLUGIN",
    "loopback": "plugins.loopback.plugin:PLUGIN",
    "tuning": "plugins.tuning.plugin:PLUGIN",
    "sbr": "plugins.sbr.plugin:PLUGIN",
    "macvlan": "plugins.macvlan.plugin:PLUGIN",
}

_TEMPLATE = """#!{python} -IS
{marker}{module}
import sys
sys.path[:0] = [{code_root!r}]
from podplumb.launcher import main
sys.exit(main({module!r}, {socket!r}, {site_dir!r}))
"""


def install(bin_dir: str, daemon_socket: str | None = None, python: str = sys.executable) -> list[str]:
    os.makedirs(bin_dir, exist_ok=True)
    # Where our packages are (this checkout for an editable install, else site-packages), and the
    # site-packages dir whose .pth files and third-party packages a plugin run in-process needs.
    code_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    site_dir = sysconfig.get_path("purelib")
    written = []
    for name, module in PLUGINS.items():
        path = os.path.join(bin_dir, name)
        temp = f"{path}.podplumb-tmp"
        with open(temp, "w") as f:
            f.write(_TEMPLATE.format(python=python, marker=MARKER.decode(), module=module, socket=daemon_socket,
                                     code_root=code_root, site_dir=site_dir))
        os.chmod(temp, 0o755)
        os.replace(temp, path)   # atomic: a runtime never runs a half-written file
        written.append(path)
    return written
