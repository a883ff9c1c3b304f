"""pyroute2's IPRoute without the rest of pyroute2.

`import pyroute2` runs the package's `__init__`, which imports every part of the library (NDB, IPDB,
conntrack, nftables, wireless, ...): most of a standalone plugin call's start-up. A plugin needs
IPRoute and NetlinkError only. So, when nothing has imported pyroute2 yet, the package is
registered without running its `__init__`, the two modules needed are imported, and the package's
other public names are made on first use (PEP 562 `__getattr__`: a submodule is imported alone,
any other name runs the real `__init__`), so that `from pyroute2 import X` elsewhere in the process
still works.
"""

import importlib
import importlib.util
import sys


def _register_package():
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        return            # not installed: the import below says so
    package = importlib.util.module_from_spec(spec)

    def complete(name):
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:     # a submodule: just that
            return importlib.import_module(f"pyroute2.{name}")
        del package.__getattr__
        spec.loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = complete
    sys.modules["pyroute2"] = package


_register_package()

from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = ["IPRoute", "NetlinkError"]
