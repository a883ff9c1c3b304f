"""What the three services share: configuration, state, busy keys, topology, health."""

import os
from dataclasses import dataclass, field

from csi.layout import Layout
from csi.state import Store
from csi.backends import BACKENDS
from csi.errors import Busy

TOPOLOGY_KEY = "topology.podplumb.csi.io/node"
DEFAULT_NAME = "podplumb.csi.io"


@dataclass
class Config:
    node_id: str
    state_dir: str
    name: str = DEFAULT_NAME
    capacity: int = 0         # 0: the state dir's free space
    max_volumes: int = 0      # 0: no limit


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

    @property
    def topology(self):
        return {TOPOLOGY_KEY: self.config.node_id}

    def available_bytes(self, tx):
        """Bytes still free for new volumes and snapshots."""
        if self.config.capacity:
            return max(0, self.config.capacity - tx.accounted_bytes())
        st = os.statvfs(self.layout.root)
        return st.f_bavail * st.f_frsize

    def volume_path(self, volume):
        return self.layout.volume(volume.id, volume.kind)

    def problem(self, tx, volume):
        """Why a volume is abnormal, or "" when healthy."""
        stage = tx.stage(volume.id)
        text = BACKENDS[volume.kind].problem(
            self.volume_path(volume), stage.path if stage else "", stage.access if stage else "")
        if text:
            return text
        for pub in tx.publications(volume.id):
            if not os.path.lexists(pub.target):
                return f"published target {pub.target} is missing"
        return ""
