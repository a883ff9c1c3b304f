"""`podplumb install`: write small executables into a CNI bin dir, one per plugin."""

import os
import sys

# Executable name -> the module:attribute holding its skel.Plugin.
PLUGINS = {
    "bridge": "plugins.bridge.plugin:PLUGIN",
    "host-local": "plugins.host_local.plugin:PLUGIN",
    "portmap": "plugins.portmap.plugin:PLUGIN",
    "vxlan": "plugins.vxlan.plugin:PLUGIN",
}

_TEMPLATE = """#!{python} -I
# podplumb-plugin: {module}
import sys
from podplumb.launcher import main
sys.exit(main({module!r}, {socket!r}))
"""


def available() -> dict:
    """The plugins whose module exists in this checkout (later issues add more)."""
    import importlib.util
    return {name: module for name, module in PLUGINS.items()
            if importlib.util.find_spec(module.partition(":")[0]) is not None}


def install(bin_dir: str, daemon_socket: str | None = None, python: str = sys.executable) -> list[str]:
    os.makedirs(bin_dir, exist_ok=True)
    written = []
    for name, module in available().items():
        path = os.path.join(bin_dir, name)
        temp = f"{path}.podplumb-tmp"
        with open(temp, "w") as f:
            f.write(_TEMPLATE.format(python=python, module=module, socket=daemon_socket))
        os.chmod(temp, 0o755)
        os.replace(temp, path)   # atomic: a runtime never runs a half-written file
        written.append(path)
    return written
