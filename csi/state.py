"""The driver's only record: volumes, snapshots, stagings, publications,
ephemeral inline volumes, in SQLite.

Each change is committed in one transaction (`Store.transaction()`), so a
crash leaves either the old or the new state, never half of one. This layer
knows nothing of gRPC: it raises StateError subclasses.
"""

import contextlib
import sqlite3
import time
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,                 -- bind | loop | gluster
    fs_type TEXT NOT NULL,              -- loop: ext4 | xfs | '' (not formatted); bind: ''
    size INTEGER NOT NULL,
    source_type TEXT NOT NULL,          -- '' | snapshot | volume
    source_id TEXT NOT NULL,
    created REAL NOT NULL,
    context TEXT NOT NULL               -- volume_context (JSON), fixed at creation
);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source_volume_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    fs_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    group_snapshot_id TEXT NOT NULL DEFAULT ''   -- '' or the group it was taken in
);
CREATE TABLE IF NOT EXISTS group_snapshots (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stages (
    volume_id TEXT PRIMARY KEY REFERENCES volumes(id),
    path TEXT NOT NULL,
    access TEXT NOT NULL,               -- mount | block
    capability TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ephemerals (
    volume_id TEXT PRIMARY KEY,         -- the CO's (kubelet: csi-<hash>); never a path
    local_id TEXT NOT NULL UNIQUE,      -- eph-<hex>: names what the driver made for it
    target TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,                 -- bind | loop | tmpfs
    fs_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    readonly INTEGER NOT NULL,
    capability TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (         -- ControllerPublishVolume (--enable-attach)
    volume_id TEXT NOT NULL REFERENCES volumes(id),
    node_id TEXT NOT NULL,
    readonly INTEGER NOT NULL,
    capability TEXT NOT NULL,
    PRIMARY KEY (volume_id, node_id)
);
CREATE TABLE IF NOT EXISTS publications (
    target TEXT PRIMARY KEY,
    volume_id TEXT NOT NULL REFERENCES volumes(id),
    readonly INTEGER NOT NULL,
    capability TEXT NOT NULL
);
"""


class StateError(Exception):
    pass


class NameTaken(StateError):
    pass


class Unknown(StateError):
    pass


@dataclass(frozen=True)
class Volume:
    id: str
    name: str
    kind: str
    fs_type: str
    size: int
    source_type: str = ""
    source_id: str = ""
    created: float = 0.0
    context: str = "{}"


@dataclass(frozen=True)
class Snapshot:
    id: str
    name: str
    source_volume_id: str
    kind: str
    fs_type: str
    size: int
    created: float = 0.0
    group_snapshot_id: str = ""


@dataclass(frozen=True)
class GroupSnapshot:
    id: str
    name: str
    created: float = 0.0


@dataclass(frozen=True)
class Stage:
    volume_id: str
    path: str
    access: str
    capability: str


@dataclass(frozen=True)
class Attachment:
    """A volume published to a node by ControllerPublishVolume."""
    volume_id: str
    node_id: str
    readonly: bool
    capability: str


@dataclass(frozen=True)
class Ephemeral:
    """An inline volume, published without CreateVolume or staging."""
    volume_id: str
    local_id: str
    target: str
    kind: str
    fs_type: str
    size: int
    readonly: bool
    capability: str
    created: float = 0.0


@dataclass(frozen=True)
class Publication:
    target: str
    volume_id: str
    readonly: bool
    capability: str


class Store:
    def __init__(self, path):
        self.path = str(path)
        with contextlib.closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            _add_missing_columns(db)

    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextlib.contextmanager
    def transaction(self):
        """One atomic unit of change; reads inside it see a consistent state."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()


class Transaction:
    def __init__(self, db):
        self._db = db

    def _rows(self, sql, *args):
        return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------ volumes
    def volume(self, volume_id):
        rows = self._rows("SELECT * FROM volumes WHERE id = ?", volume_id)
        return Volume(*rows[0]) if rows else None

    def volume_by_name(self, name):
        rows = self._rows("SELECT * FROM volumes WHERE name = ?", name)
        return Volume(*rows[0]) if rows else None

    def volumes(self, after="", limit=0):
        """Volumes ordered by ID, starting after `after`; limit 0 = all."""
        sql = "SELECT * FROM volumes WHERE id > ? ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [Volume(*r) for r in self._rows(sql, after)]

    def add_volume(self, volume):
        if self.volume_by_name(volume.name):
            raise NameTaken(f"a volume named {volume.name!r} already exists")
        self._db.execute("INSERT INTO volumes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (volume.id, volume.name, volume.kind, volume.fs_type, volume.size,
                          volume.source_type, volume.source_id, volume.created or time.time(),
                          volume.context))

    def set_volume_fs_type(self, volume_id, fs_type):
        """Record the file system made on a volume that was created without one."""
        cur = self._db.execute("UPDATE volumes SET fs_type = ? WHERE id = ? AND fs_type = ''",
                               (fs_type, volume_id))
        if cur.rowcount == 0:
            raise Unknown(f"volume {volume_id} does not exist or already has a file system")

    def set_volume_size(self, volume_id, size):
        cur = self._db.execute("UPDATE volumes SET size = ? WHERE id = ?", (size, volume_id))
        if cur.rowcount == 0:
            raise Unknown(f"volume {volume_id} does not exist")

    def delete_volume(self, volume_id):
        self._db.execute("DELETE FROM attachments WHERE volume_id = ?", (volume_id,))
        self._db.execute("DELETE FROM publications WHERE volume_id = ?", (volume_id,))
        self._db.execute("DELETE FROM stages WHERE volume_id = ?", (volume_id,))
        self._db.execute("DELETE FROM volumes WHERE id = ?", (volume_id,))

    # ---------------------------------------------------------- snapshots
    def snapshot(self, snapshot_id):
        rows = self._rows("SELECT * FROM snapshots WHERE id = ?", snapshot_id)
        return Snapshot(*rows[0]) if rows else None

    def snapshot_by_name(self, name):
        rows = self._rows("SELECT * FROM snapshots WHERE name = ?", name)
        return Snapshot(*rows[0]) if rows else None

    def snapshots(self, after="", limit=0, source_volume_id=None):
        sql = "SELECT * FROM snapshots WHERE id > ?"
        args = [after]
        if source_volume_id is not None:
            sql += " AND source_volume_id = ?"
            args.append(source_volume_id)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [Snapshot(*r) for r in self._rows(sql, *args)]

    def add_snapshot(self, snap):
        if self.snapshot_by_name(snap.name):
            raise NameTaken(f"a snapshot named {snap.name!r} already exists")
        self._db.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (snap.id, snap.name, snap.source_volume_id, snap.kind, snap.fs_type,
                          snap.size, snap.created or time.time(), snap.group_snapshot_id))

    def delete_snapshot(self, snapshot_id):
        self._db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    # ---------------------------------------------------- group snapshots
    def group_snapshot(self, group_id):
        rows = self._rows("SELECT * FROM group_snapshots WHERE id = ?", group_id)
        return GroupSnapshot(*rows[0]) if rows else None

    def group_snapshot_by_name(self, name):
        rows = self._rows("SELECT * FROM group_snapshots WHERE name = ?", name)
        return GroupSnapshot(*rows[0]) if rows else None

    def group_members(self, group_id):
        return [Snapshot(*r) for r in self._rows(
            "SELECT * FROM snapshots WHERE group_snapshot_id = ? ORDER BY id", group_id)]

    def add_group_snapshot(self, group):
        if self.group_snapshot_by_name(group.name):
            raise NameTaken(f"a group snapshot named {group.name!r} already exists")
        self._db.execute("INSERT INTO group_snapshots VALUES (?, ?, ?)",
                         (group.id, group.name, group.created or time.time()))

    def delete_group_snapshot(self, group_id):
        self._db.execute("DELETE FROM snapshots WHERE group_snapshot_id = ?", (group_id,))
        self._db.execute("DELETE FROM group_snapshots WHERE id = ?", (group_id,))

    # --------------------------------------------------------- accounting
    def accounted_bytes(self):
        """Bytes taken from the state dir's capacity (gluster volumes live elsewhere)."""
        (volumes,), = self._rows("SELECT COALESCE(SUM(size), 0) FROM volumes WHERE kind != 'gluster'")
        (snaps,), = self._rows("SELECT COALESCE(SUM(size), 0) FROM snapshots")
        (inline,), = self._rows("SELECT COALESCE(SUM(size), 0) FROM ephemerals WHERE kind != 'tmpfs'")
        return volumes + snaps + inline

    # ------------------------------------------------------------- stages
    def stage(self, volume_id):
        rows = self._rows("SELECT * FROM stages WHERE volume_id = ?", volume_id)
        return Stage(*rows[0]) if rows else None

    def stages(self):
        return [Stage(*r) for r in self._rows("SELECT * FROM stages ORDER BY volume_id")]

    def add_stage(self, stage):
        self._db.execute("INSERT INTO stages VALUES (?, ?, ?, ?)",
                         (stage.volume_id, stage.path, stage.access, stage.capability))

    def delete_stage(self, volume_id):
        self._db.execute("DELETE FROM stages WHERE volume_id = ?", (volume_id,))

    # ------------------------------------------------------- publications
    def publication(self, target):
        rows = self._rows("SELECT * FROM publications WHERE target = ?", target)
        return _publication(rows[0]) if rows else None

    def publications(self, volume_id=None):
        if volume_id is None:
            rows = self._rows("SELECT * FROM publications ORDER BY target")
        else:
            rows = self._rows("SELECT * FROM publications WHERE volume_id = ? ORDER BY target",
                              volume_id)
        return [_publication(r) for r in rows]

    def add_publication(self, pub):
        self._db.execute("INSERT INTO publications VALUES (?, ?, ?, ?)",
                         (pub.target, pub.volume_id, int(pub.readonly), pub.capability))

    def delete_publication(self, target):
        self._db.execute("DELETE FROM publications WHERE target = ?", (target,))

    # -------------------------------------------------------- attachments
    def attachments(self, volume_id=None, node_id=None):
        """[Attachment] of a volume, of a node, or all."""
        sql, args = "SELECT * FROM attachments WHERE 1", []
        if volume_id is not None:
            sql, args = sql + " AND volume_id = ?", args + [volume_id]
        if node_id is not None:
            sql, args = sql + " AND node_id = ?", args + [node_id]
        rows = self._rows(sql + " ORDER BY volume_id, node_id", *args)
        return [Attachment(v, n, bool(r), c) for v, n, r, c in rows]

    def add_attachment(self, att):
        self._db.execute("INSERT INTO attachments VALUES (?, ?, ?, ?)",
                         (att.volume_id, att.node_id, int(att.readonly), att.capability))

    def delete_attachment(self, volume_id, node_id):
        self._db.execute("DELETE FROM attachments WHERE volume_id = ? AND node_id = ?",
                         (volume_id, node_id))

    # --------------------------------------------------- ephemeral volumes
    def ephemeral(self, volume_id):
        rows = self._rows("SELECT * FROM ephemerals WHERE volume_id = ?", volume_id)
        return _ephemeral(rows[0]) if rows else None

    def ephemeral_at(self, target):
        rows = self._rows("SELECT * FROM ephemerals WHERE target = ?", target)
        return _ephemeral(rows[0]) if rows else None

    def ephemerals(self):
        return [_ephemeral(r) for r in self._rows("SELECT * FROM ephemerals ORDER BY volume_id")]

    def add_ephemeral(self, eph):
        self._db.execute("INSERT INTO ephemerals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (eph.volume_id, eph.local_id, eph.target, eph.kind, eph.fs_type,
                          eph.size, int(eph.readonly), eph.capability,
                          eph.created or time.time()))

    def delete_ephemeral(self, volume_id):
        self._db.execute("DELETE FROM ephemerals WHERE volume_id = ?", (volume_id,))


def _add_missing_columns(db):
    """Columns added after a state dir was first made (its tables already exist)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(snapshots)")}
    if "group_snapshot_id" not in columns:
        db.execute("ALTER TABLE snapshots ADD COLUMN group_snapshot_id TEXT NOT NULL DEFAULT ''")


def _ephemeral(row):
    values = list(row)
    values[6] = bool(values[6])
    return Ephemeral(*values)


def _publication(row):
    target, volume_id, readonly, capability = row
    return Publication(target, volume_id, bool(readonly), capability)
