"""podman's CNI backend running containers on podplumb's freshly installed plugins, on a fake host
(a network namespace; storage, state and config under tmp dirs, never the machine's): addresses, a
published port answered, everything gone after removal; with and without the node daemon."""

import json
import os
import shutil

import pytest

from tests import kernel
from tests.runtimes import common

PODMAN = shutil.which("podman")
RUNC = shutil.which("runc")
pytestmark = pytest.mark.skipif(not (PODMAN and RUNC and os.access(common.BUSYBOX, os.X_OK)),
                                reason="needs podman, runc and busybox-static")

CONTAINERS_CONF = """[containers]
# root here lacks CAP_SYS_RESOURCE: limits podman would raise must stay within ours
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}"]
network_config_dir = "{conf_dir}"
[engine]
# podman may send the DEL from the cleanup process conmon starts, with an environment of its own:
# the engine's env reaches that process too
env = ["PODPLUMB_STATE_DIR={state_dir}"]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class Podman:
    def __init__(self, work: str, host_ns: str, state_dir: str):
        self.work, self.host_ns = work, host_ns
        self.conf_dir = os.path.join(work, "net.d")
        self.bin_dir = os.path.join(work, "bin")
        os.makedirs(self.conf_dir)
        os.makedirs(self.bin_dir)
        conf = os.path.join(work, "containers.conf")
        with open(conf, "w") as f:
            f.write(CONTAINERS_CONF.format(bin_dir=self.bin_dir, conf_dir=self.conf_dir, state_dir=state_dir))
        self.env = dict(os.environ, CONTAINERS_CONF=conf, PODPLUMB_STATE_DIR=state_dir)
        self.argv = [PODMAN, "--root", os.path.join(work, "root"), "--runroot", os.path.join(work, "run"),
                     "--tmpdir", os.path.join(work, "tmp"), "--storage-driver", "vfs"]

    def __call__(self, *args, check=True, timeout=120) -> str:
        run = common.in_netns(self.host_ns, self.argv + list(args), env=self.env, timeout=timeout)
        if check and run.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {run.returncode}: {run.stdout}{run.stderr}")
        return run.stdout

    def add_network(self, conflist: dict):
        with open(os.path.join(self.conf_dir, conflist["name"] + ".conflist"), "w") as f:
            json.dump(conflist, f)


@pytest.fixture
def podman(host_ns, tmp_path):
    work = common.short_tmpdir("pppod-")
    runtime = Podman(work, host_ns, str(tmp_path / "records"))
    try:
        probe = runtime("info", "--format", "{{.Host.NetworkBackend}}", check=False, timeout=60)
        if probe.strip() != "cni":
            pytest.skip(f"podman cannot use its CNI backend here: {probe!r}")
        yield runtime
    finally:
        runtime("rm", "--all", "--force", "--time", "0", check=False)
        common.unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("mode", ["standalone", "daemon"])
def test_container_with_a_published_port_and_clean_removal(podman, host_ns, data_dir, tmp_path, mode):
    daemon = common.plugins(podman.bin_dir, mode, host_ns, podman.work)
    try:
        network = kernel.unique("ppnet-", 14)
        conflist = common.conflist(network, data_dir, kernel.unique("ppbr", 12))
        podman.add_network(conflist)
        rootfs = common.busybox_rootfs(os.path.join(podman.work, "rootfs"))
        name = kernel.unique("pp-", 12)
        podman("run", "-d", "--name", name, "--network", network, "-p",
               f"127.0.0.1:{common.HOST_PORT}:{common.POD_PORT}", "--rootfs", rootfs,
               "/bin/httpd", "-f", "-p", str(common.POD_PORT), "-h", "/www")

        address, broadcast = common.pod_ipv4(podman("exec", name, "ip", "-4", "addr", "show", "eth0"))
        assert address.startswith("10.88.77.") and broadcast == "10.88.77.255"
        assert common.leases(data_dir, network) == [address.split("/")[0]]
        page = common.in_netns(host_ns, ["curl", "-sf", "--retry", "5", "--retry-connrefused", "--max-time", "5",
                                         f"http://127.0.0.1:{common.HOST_PORT}/"], timeout=60)
        assert page.stdout == common.PAGE, page
        assert kernel.ping(host_ns, address.split("/")[0])
        assert len(common.host_veths(host_ns)) == 1
        if daemon:
            assert common.served_calls(daemon) >= 2, daemon.log()     # bridge and portmap ADD

        podman("rm", "--force", "--time", "0", name)
        assert common.leases(data_dir, network) == []
        assert common.host_veths(host_ns) == []
        rules = common.ruleset(host_ns)
        assert str(common.HOST_PORT) not in rules and address.split("/")[0] not in rules
        assert common.records(str(tmp_path / "records")) == []
        assert podman("ps", "--all", "--quiet").strip() == ""
    finally:
        if daemon:
            assert daemon.stop() == 0, daemon.log()
