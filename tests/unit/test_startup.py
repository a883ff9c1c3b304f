"""Standalone start-up: a plugin call imports only the pyroute2 modules it needs, none for STATUS."""

import json
import subprocess
import sys

from podplumb.install import install


def _modules_after(code: str) -> dict:
    program = code + "\nimport json, sys\nprint(json.dumps({'pyroute2': 'pyroute2' in sys.modules, " \
                     "'ndb': 'pyroute2.ndb.main' in sys.modules, 'ipdb': 'pyroute2.ipdb' in sys.modules}))"
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def test_importing_a_plugin_imports_no_pyroute2():
    for module in ("plugins.bridge.plugin", "plugins.vxlan.plugin", "plugins.portmap.plugin",
                   "plugins.host_local.plugin"):
        assert _modules_after(f"import {module}")["pyroute2"] is False, module


def test_links_addresses_and_routes_need_no_pyroute2():
    found = _modules_after("from cni import netlink\nwith netlink.Namespace() as ns:\n"
                           "    lo = ns.link('lo'); ns.addresses(lo.index); ns.routes(lo.index)")
    assert found == {"pyroute2": False, "ndb": False, "ipdb": False}


def test_a_namespaces_iproute_loads_without_the_rest_of_pyroute2():
    found = _modules_after("from cni import netlink\nwith netlink.Namespace() as ns: ns.ipr.get_links()")
    assert found == {"pyroute2": True, "ndb": False, "ipdb": False}


def test_the_rest_of_pyroute2_is_still_there_for_whoever_asks():
    found = _modules_after("from cni import netlink\nwith netlink.Namespace() as ns: ns.ipr\n"
                           "from pyroute2 import NDB, IPRoute, NetlinkError\n"
                           "from cni.pyroute2_lite import IPRoute as Lite, NetlinkError as LiteError\n"
                           "assert IPRoute is Lite and NetlinkError is LiteError")
    assert found["ndb"] is True


def test_bridge_status_needs_no_pyroute2(tmp_path):
    bin_dir = tmp_path / "bin"
    install(str(bin_dir))
    conf = {"cniVersion": "1.1.0", "name": "n", "type": "bridge",
            "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "subnet": "10.1.0.0/24"}}
    code = ("from cni import skel\n"
            f"out, status = skel.run(skel.load_plugin('plugins.bridge.plugin:PLUGIN'), "
            f"{{'CNI_COMMAND': 'STATUS', 'CNI_PATH': '{bin_dir}'}}, {json.dumps(json.dumps(conf))}.encode())\n"
            "assert status == 0, out")
    assert _modules_after(code)["pyroute2"] is False


def test_a_bridge_call_defines_no_dataclass_but_netlinks():
    """Every dataclass costs a standalone call the exec of its generated methods, and `dataclasses` itself
    imports inspect, ast and tokenize: the modules of a bridge ADD use plain classes. (cni.netlink's
    Link and Vxlan are the last ones; with them gone, `dataclasses` is not imported at all.)"""
    code = ("import sys\nimport plugins.bridge.plugin, plugins.host_local.plugin\n"
            "found = sorted({c.__module__ for m in list(sys.modules.values()) for c in vars(m).values()\n"
            "                if isinstance(c, type) and hasattr(c, '__dataclass_fields__')\n"
            "                and c.__module__.split('.')[0] in ('cni', 'plugins', 'podplumb')})\n"
            "print(','.join(found))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["cni.netlink"]
