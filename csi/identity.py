"""CSI Identity service: who we are and what we can do."""

from importlib import metadata

from google.protobuf import wrappers_pb2

from csi.errors import rpc
from csi.v1 import csi_pb2, csi_pb2_grpc

try:
    VERSION = metadata.version("podplumb")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = "0.0.0+source"

Service = csi_pb2.PluginCapability.Service
Expansion = csi_pb2.PluginCapability.VolumeExpansion

CAPABILITIES = [
    csi_pb2.PluginCapability(service=Service(type=Service.CONTROLLER_SERVICE)),
    csi_pb2.PluginCapability(service=Service(type=Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
    csi_pb2.PluginCapability(service=Service(type=Service.GROUP_CONTROLLER_SERVICE)),
    csi_pb2.PluginCapability(volume_expansion=Expansion(type=Expansion.ONLINE)),
]


class IdentityService(csi_pb2_grpc.IdentityServicer):
    def __init__(self, driver):
        self.driver = driver

    @rpc()
    def GetPluginInfo(self, request, context):
        return csi_pb2.GetPluginInfoResponse(name=self.driver.config.name, vendor_version=VERSION)

    @rpc()
    def GetPluginCapabilities(self, request, context):
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=CAPABILITIES)

    @rpc()
    def Probe(self, request, context):
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))
