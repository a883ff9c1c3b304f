"""What the three services share: configuration, state, busy keys, topology, health."""

import os
from dataclasses import dataclass, field

from csi.layout import Layout, is_snapshot_id, is_volume_id
from csi.state import Store
from csi.backends import BACKENDS
from csi.backends.gluster import volume_path as gluster_volume_path
from csi.errors import Busy, NotFound, ResourceExhausted
from csi.v1 import csi_pb2

TOPOLOGY_KEY = "topology.podplumb.csi.io/node"
DEFAULT_NAME = "podplumb.csi.io"
DEFAULT_KUBELET_DIR = "/var/lib/kubelet"


@dataclass
class Config:
    node_id: str
    state_dir: str
    name: str = DEFAULT_NAME
    capacity: int = 0         # 0: the state dir's free space
    max_volumes: int = 0      # 0: no limit
    enable_attach: bool = False   # serve ControllerPublish/Unpublish
    glusterd_socket: str = ""  # "": the gluster CLI's default
    kubelet_dir: str = DEFAULT_KUBELET_DIR   # staging and target paths must lie under it


@dataclass
class Driver:
    config: Config
    layout: Layout = field(init=False)
    store: Store = field(init=False)
    busy: Busy = field(default_factory=Busy)

    def __post_init__(self):
        self.layout = Layout(self.config.state_dir)
        self.layout.create()
        self.store = Store(self.layout.db)
        BACKENDS["gluster"].use_glusterd_socket(self.config.glusterd_socket)

    @property
    def topology(self):
        return {TOPOLOGY_KEY: self.config.node_id}

    def available_bytes(self, tx):
        """Bytes still free for new volumes and snapshots."""
        if self.config.capacity:
            return max(0, self.config.capacity - tx.accounted_bytes())
        st = os.statvfs(self.layout.root)
        return st.f_bavail * st.f_frsize

    def check_room(self, tx, extra_bytes):
        """ResourceExhausted unless extra_bytes more fit in the capacity."""
        if extra_bytes > self.available_bytes(tx):
            raise ResourceExhausted(f"not enough capacity for {extra_bytes} more bytes")

    def volume_path(self, volume):
        if volume.kind == "gluster":       # a directory in a Gluster volume, named by its context
            return gluster_volume_path(self.layout.root, volume)
        return self.layout.volume(volume.id, volume.kind)

    def problem(self, volume, stage, pubs):
        """Why a volume is abnormal, or "" when healthy; stage and pubs are its records."""
        text = BACKENDS[volume.kind].problem(
            self.volume_path(volume), stage.path if stage else "", stage.access if stage else "")
        if text:
            return text
        for pub in pubs:
            if not os.path.lexists(pub.target):
                return f"published target {pub.target} is missing"
        return ""


def volume_condition(problem):
    """The VolumeCondition for a Driver.problem() text: abnormal unless it is ""."""
    return csi_pb2.VolumeCondition(abnormal=bool(problem), message=problem or "healthy")


def get_volume(tx, volume_id, what="volume"):
    """The record of volume_id; NotFound when there is none or the ID is malformed."""
    vol = tx.volume(volume_id) if is_volume_id(volume_id) else None
    if vol is None:
        raise NotFound(f"{what} {volume_id!r} does not exist")
    return vol


def get_snapshot(tx, snapshot_id, what="snapshot"):
    """The record of snapshot_id; NotFound when there is none or the ID is malformed."""
    snap = tx.snapshot(snapshot_id) if is_snapshot_id(snapshot_id) else None
    if snap is None:
        raise NotFound(f"{what} {snapshot_id!r} does not exist")
    return snap
