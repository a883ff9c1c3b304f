"""containerd (started by the test, CRI plugin disabled) running `ctr run --cni` on a locally built
OCI image with podplumb's plugins, on a fake host; with and without the node daemon. `ctr run -d`
never sends DEL: `podplumb gc` removes what the killed container left."""

import json
import os
import shutil

import pytest

from tests import kernel
from tests.runtimes import common
from tests.runtimes.containerd import NAMESPACE, Containerd, available

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")


@pytest.fixture
def node(host_ns, tmp_path):
    """(containerd, CNI bin dir, conf dir, work dir, records dir)."""
    work = common.short_tmpdir("ppctd-")
    conf_dir, bin_dir = os.path.join(work, "net.d"), os.path.join(work, "opt", "cni", "bin")
    os.makedirs(conf_dir)
    os.makedirs(bin_dir)
    records = str(tmp_path / "records")
    containerd = Containerd(work, host_ns, conf_dir, os.path.join(work, "opt"), env={"PODPLUMB_STATE_DIR": records})
    try:
        containerd.start()
        yield containerd, bin_dir, conf_dir, work, records
    finally:
        containerd.remove_everything()
        containerd.stop()
        common.unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def gc(host_ns, bin_dir, records):
    import sys
    podplumb = os.path.join(os.path.dirname(sys.executable), "podplumb")
    return common.in_netns(host_ns, [podplumb, "gc", "--bin-dir", bin_dir],
                           env=dict(os.environ, PODPLUMB_STATE_DIR=records), timeout=120)


@pytest.mark.parametrize("mode", ["standalone", "daemon"])
def test_ctr_run_cni_then_gc_after_the_container_is_killed(node, host_ns, data_dir, mode):
    containerd, bin_dir, conf_dir, work, records = node
    daemon = common.plugins(bin_dir, mode, host_ns, work)
    try:
        network = kernel.unique("ppnet-", 14)
        with open(os.path.join(conf_dir, "10-podplumb.conflist"), "w") as f:
            json.dump(common.conflist(network, data_dir, kernel.unique("ppbr", 12), "10.88.78.0/24"), f)
        image = containerd.import_image(common.busybox_rootfs(os.path.join(work, "rootfs")), ["/bin/sh"])

        # foreground with --rm: ctr sends DEL itself when the task ends
        shown = containerd.ctr("run", "--rm", "--cni", "--snapshotter", "native", image, kernel.unique("once-", 12),
                               "/bin/ip", "-4", "addr", "show", "eth0").stdout
        address, broadcast = common.pod_ipv4(shown)
        assert address.startswith("10.88.78.") and broadcast == "10.88.78.255"
        assert common.leases(data_dir, network) == []

        # detached: no DEL ever comes
        name = kernel.unique("web-", 12)
        containerd.ctr("run", "-d", "--cni", "--snapshotter", "native", image, name,
                       "/bin/httpd", "-f", "-p", str(common.POD_PORT), "-h", "/www")
        [pod_ip] = common.leases(data_dir, network)
        page = common.in_netns(host_ns, ["curl", "-sf", "--retry", "5", "--retry-connrefused", "--max-time", "5",
                                         f"http://{pod_ip}:{common.POD_PORT}/"], timeout=60)
        assert page.stdout == common.PAGE, page
        assert len(common.host_veths(host_ns)) == 1
        if daemon:
            assert common.served_calls(daemon) >= 4, daemon.log()

        containerd.remove_everything()
        assert common.leases(data_dir, network) == [pod_ip], "ctr run -d never sends DEL"
        run = gc(host_ns, bin_dir, records)
        assert run.returncode == 0 and f"removed {network} {NAMESPACE}-{name} eth0" in run.stdout, run
        assert common.leases(data_dir, network) == []
        assert common.host_veths(host_ns) == []
        assert pod_ip not in common.ruleset(host_ns)
        assert common.records(records) == []
    finally:
        if daemon:
            assert daemon.stop() == 0, daemon.log()
