"""The committed generated code must be exactly what scripts/gen-proto.sh produces."""

import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[2]
GENERATED = ("csi/v1/csi_pb2.py", "csi/v1/csi_pb2_grpc.py")


def test_generated_code_matches_proto(tmp_path):
    subprocess.run([str(REPO / "scripts/gen-proto.sh"), str(tmp_path)], check=True)
    for name in GENERATED:
        fresh = (tmp_path / name).read_text()
        committed = (REPO / name).read_text()
        assert fresh == committed, f"{name} is stale: run scripts/gen-proto.sh"


def test_services_and_spec_facts():
    from csi.v1 import csi_pb2

    services = set(csi_pb2.DESCRIPTOR.services_by_name)
    assert {"Identity", "Controller", "Node", "GroupController", "SnapshotMetadata"} <= services
    mode = csi_pb2.VolumeCapability.AccessMode
    assert mode.SINGLE_NODE_SINGLE_WRITER == 6 and mode.SINGLE_NODE_MULTI_WRITER == 7
    assert csi_pb2.ControllerServiceCapability.RPC.GET_SNAPSHOT == 15
    assert csi_pb2.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP == 6
    secret = csi_pb2.DESCRIPTOR.extensions_by_name["csi_secret"]
    field = csi_pb2.CreateVolumeRequest.DESCRIPTOR.fields_by_name["secrets"]
    assert field.GetOptions().Extensions[secret] is True
