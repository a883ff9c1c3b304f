"""Standalone start-up: a plugin call imports only the pyroute2 modules it needs, none for STATUS."""

import json
import os
import subprocess
import sys

from podplumb.install import install
from tests import kernel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def _imported_by_a_call(bin_dir, command: str, host: str, pod: str, config: dict) -> set:
    """The modules a standalone call of the installed bridge executable imports, run in `host` under
    `python -X importtime` with the executable's own interpreter and flags."""
    launcher = bin_dir / "bridge"
    python = launcher.read_text().splitlines()[0][2:].split()[0]
    env = [f"CNI_COMMAND={command}", f"CNI_PATH={bin_dir}", "CNI_CONTAINERID=ctr", "CNI_IFNAME=eth0",
           f"CNI_NETNS={kernel.netns_path(pod)}", f"PODPLUMB_STATE_DIR={bin_dir.parent / 'records'}"]
    proc = kernel.sh("env", "-i", *env, python, "-X", "importtime", "-I", "-S", str(launcher), ns=host,
                     input=json.dumps(config))
    assert '"code"' not in proc.stdout, proc.stdout
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


def test_a_bridge_add_and_del_import_nothing_they_do_not_need(tmp_path, netns):
    """What a standalone call pays for at every pod event: none of dataclasses (with inspect, ast and
    tokenize), importlib, logging (unless something is logged), traceback (failures only), subprocess
    (foreign plugins only), hashlib, nftables (rules only)."""
    bin_dir = tmp_path / "bin"
    install(str(bin_dir))
    host, pod = netns("pphost"), netns("pppod")
    config = {"cniVersion": "1.1.0", "name": "startup", "type": "bridge", "bridge": "ppstart0", "isGateway": True,
              "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "subnet": "10.1.0.0/24"}}
    for command in ("ADD", "DEL"):
        imported = _imported_by_a_call(bin_dir, command, host, pod, config)
        assert "plugins.host_local.allocator" in imported or command == "DEL"
        unneeded = {"dataclasses", "importlib", "logging", "traceback", "subprocess", "hashlib", "cni.nftables",
                    "pyroute2"} & imported
        assert not unneeded, f"{command} imports {unneeded}"


def test_logging_is_set_up_when_a_quiet_call_first_logs():
    """At the default level a call leaves `logging` alone until it has something to say; what it
    says then is formatted and placed as usual."""
    code = ("import sys\nfrom cni import log\nlog.configure({})\n"
            "assert log.quiet() and 'logging' not in sys.modules\n"
            "log.logger().warning('lease dir %s unreadable', '/x')\n"
            "log.logger().info('not shown')\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {REPO!r})\n" + code],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.endswith(" WARNING lease dir /x unreadable") and line[:4].isdigit()


def test_a_call_asking_for_info_logs_its_start(tmp_path):
    code = ("import sys\nfrom cni import log\n"
            f"log.configure({{'PODPLUMB_LOG_FILE': {str(tmp_path / 'call.log')!r}}})\n"
            "assert not log.quiet() and 'logging' in sys.modules\n"
            "log.logger().info('ADD ctr')\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {REPO!r})\n" + code],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "call.log").read_text().rstrip().endswith(" INFO ADD ctr")
