"""The CSI driver's /metrics (per-RPC counts and durations, state gauges) and JSON logs."""

import json
import re
import urllib.request

import grpc
import pytest

from csi.v1 import csi_pb2 as pb
from tests.csi.conftest import MiB, Driver, dispose_root, mount_cap, new_root
from tests.prometheus import sample


@pytest.fixture
def metered_driver():
    root = new_root()
    drv = Driver(root, extra_args=["--metrics-address", "127.0.0.1:0", "--log-format", "json"]).start()
    yield drv
    leftovers = dispose_root(root, drv)
    assert not leftovers, f"driver left behind: {leftovers}"


def test_rpcs_are_counted_by_method_and_status_and_volumes_gauged(metered_driver):
    drv = metered_driver
    lines = [line for line in drv.log_path.read_text().splitlines() if line.startswith("{")]
    url = next(m.group(1) for m in (re.search(r"metrics on (http://\S+/metrics)", json.loads(l)["message"])
                                    for l in lines) if m)
    drv.identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=30)
    volume = drv.controller.CreateVolume(pb.CreateVolumeRequest(
        name="metrics-vol", parameters={"kind": "bind"}, volume_capabilities=[mount_cap()],
        capacity_range=pb.CapacityRange(required_bytes=8 * MiB)), timeout=60).volume
    with pytest.raises(grpc.RpcError) as failed:
        drv.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=""), timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert sample(text, "podplumb_csi_requests_total", method="GetPluginInfo", code="OK") == 1
    assert sample(text, "podplumb_csi_requests_total", method="CreateVolume", code="OK") == 1
    assert sample(text, "podplumb_csi_requests_total", method="DeleteVolume", code="INVALID_ARGUMENT") == 1
    assert sample(text, "podplumb_csi_request_duration_seconds_count", method="CreateVolume") == 1
    assert sample(text, "podplumb_csi_volumes", kind="bind") == 1

    drv.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert sample(text, "podplumb_csi_volumes", kind="bind") == 0
    assert sample(text, "podplumb_csi_requests_total", method="DeleteVolume", code="OK") == 1

    drv.stop()
    entries = [json.loads(l) for l in drv.log_path.read_text().splitlines() if l.startswith("{")]
    assert any("CreateVolume" in e["message"] for e in entries)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
