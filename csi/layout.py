"""Where things live in the state dir, and the only way to turn an ID into a path.

IDs are generated here and checked against a strict pattern before any path
is built from them, so no request field ever becomes a path unchecked.
"""

import os
import re
import uuid

VOLUME_ID = re.compile(r"^vol-[0-9a-f]{32}\Z")
SNAPSHOT_ID = re.compile(r"^snap-[0-9a-f]{32}\Z")
GROUP_SNAPSHOT_ID = re.compile(r"^group-[0-9a-f]{32}\Z")
EPHEMERAL_ID = re.compile(r"^eph-[0-9a-f]{32}\Z")

SUFFIX = {"bind": "", "loop": ".img"}


def new_volume_id():
    return "vol-" + uuid.uuid4().hex


def new_snapshot_id():
    return "snap-" + uuid.uuid4().hex


def new_group_snapshot_id():
    return "group-" + uuid.uuid4().hex


def is_group_snapshot_id(value):
    return bool(GROUP_SNAPSHOT_ID.match(value))


def new_ephemeral_id():
    return "eph-" + uuid.uuid4().hex


def is_ephemeral_id(value):
    return bool(EPHEMERAL_ID.match(value))


def is_volume_id(value):
    return bool(VOLUME_ID.match(value))


def is_snapshot_id(value):
    return bool(SNAPSHOT_ID.match(value))


def split_name(name):
    """(base, kind) of a file name in volumes/ or snapshots/: the reverse of SUFFIX."""
    for kind, suffix in sorted(SUFFIX.items(), key=lambda item: len(item[1]), reverse=True):
        if name.endswith(suffix):
            return name.removesuffix(suffix), kind


class Layout:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.db = os.path.join(self.root, "state.db")
        self.volumes = os.path.join(self.root, "volumes")
        self.snapshots = os.path.join(self.root, "snapshots")
        self.tmp = os.path.join(self.root, "tmp")
        self.ephemeral_dir = os.path.join(self.root, "ephemeral")

    def create(self):
        for d in (self.root, self.volumes, self.snapshots, self.tmp, self.ephemeral_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def volume(self, volume_id, kind):
        if not is_volume_id(volume_id):
            raise ValueError(f"not a volume ID: {volume_id!r}")
        return os.path.join(self.volumes, volume_id + SUFFIX[kind])

    def snapshot(self, snapshot_id, kind):
        if not is_snapshot_id(snapshot_id):
            raise ValueError(f"not a snapshot ID: {snapshot_id!r}")
        return os.path.join(self.snapshots, snapshot_id + SUFFIX[kind])

    def ephemeral(self, local_id, kind):
        """Where an inline volume's directory (bind) or backing file (loop) lives."""
        if not is_ephemeral_id(local_id):
            raise ValueError(f"not an ephemeral ID: {local_id!r}")
        return os.path.join(self.ephemeral_dir, local_id + SUFFIX.get(kind, ""))

    def scratch(self, name):
        """A path in tmp/ for work in progress; name is one of our IDs."""
        if not (is_volume_id(name) or is_snapshot_id(name)):
            raise ValueError(f"not an ID: {name!r}")
        return os.path.join(self.tmp, name)
