"""Checks of request fields: names, paths, capabilities. Each raises InvalidArgument."""

import json
import os
import re

from csi.errors import InvalidArgument
from csi.mounts import FS_TYPES, allowed_flag
from csi.v1 import csi_pb2

Mode = csi_pb2.VolumeCapability.AccessMode

SUPPORTED_MODES = frozenset({
    Mode.SINGLE_NODE_WRITER,
    Mode.SINGLE_NODE_READER_ONLY,
    Mode.SINGLE_NODE_SINGLE_WRITER,
    Mode.SINGLE_NODE_MULTI_WRITER,
})
# Kinds whose storage every node reaches, and the modes that adds.
SHARED_KINDS = frozenset({"gluster"})
SHARED_MODES = SUPPORTED_MODES | {
    Mode.MULTI_NODE_READER_ONLY,
    Mode.MULTI_NODE_SINGLE_WRITER,
    Mode.MULTI_NODE_MULTI_WRITER,
}

# Parameters the CO's sidecars add (PVC name, secrets' names ...): not ours to judge.
CO_PARAMETER_PREFIX = "csi.storage.k8s.io/"
MAX_NAME = 128
MAX_PATH = 4096
MAX_FLAGS_BYTES = 4096
# Control characters the spec bans in names (common whitespace is allowed).
_BANNED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def name(value):
    if not value:
        raise InvalidArgument("name is required")
    if len(value) > MAX_NAME:
        raise InvalidArgument(f"name is longer than {MAX_NAME} characters")
    if _BANNED.search(value):
        raise InvalidArgument("name contains control characters")
    return value


def parameters(given, known=frozenset()):
    """Every parameter is one we know, or one the CO's sidecars add."""
    unknown = sorted(k for k in given if k not in known and not k.startswith(CO_PARAMETER_PREFIX))
    if unknown:
        raise InvalidArgument(f"unknown parameter(s): {', '.join(unknown)}")


def path(value, what):
    """An absolute, normalised path without NUL, never "/", and canonical: no
    component is a symbolic link, so a mount cannot be steered elsewhere."""
    if not value:
        raise InvalidArgument(f"{what} is required")
    if "\x00" in value or len(value.encode()) > MAX_PATH:
        raise InvalidArgument(f"{what} is not a valid path")
    if not os.path.isabs(value) or os.path.normpath(value) != value or value == "/":
        raise InvalidArgument(f"{what} must be an absolute, normalised path: {value!r}")
    if os.path.realpath(value) != value:
        raise InvalidArgument(f"{what} is or goes through a symbolic link: {value!r}")
    return value


def access_of(cap):
    return "block" if cap.HasField("block") else "mount"


def capability(cap, kind=None):
    """A single capability we can serve (for a volume of `kind`, when known)."""
    which = cap.WhichOneof("access_type")
    if which is None:
        raise InvalidArgument("volume capability needs an access type (mount or block)")
    if not cap.HasField("access_mode"):
        raise InvalidArgument("volume capability needs an access mode")
    if cap.access_mode.mode not in (SHARED_MODES if kind in SHARED_KINDS else SUPPORTED_MODES):
        raise InvalidArgument(
            f"access mode {Mode.Mode.Name(cap.access_mode.mode)} is not supported: "
            "volumes are local to one node")
    if which == "mount":
        if cap.mount.fs_type and cap.mount.fs_type not in FS_TYPES:
            raise InvalidArgument(f"unsupported fs_type {cap.mount.fs_type!r}; use one of {FS_TYPES}")
        flags = list(cap.mount.mount_flags)
        if any(not f or "\x00" in f or "\n" in f for f in flags) \
                or sum(len(f) for f in flags) > MAX_FLAGS_BYTES:
            raise InvalidArgument("invalid mount_flags")
        refused = [f for f in flags if not allowed_flag(f)]
        if refused:
            raise InvalidArgument(f"mount flag(s) not allowed: {', '.join(refused)}")
        if cap.mount.volume_mount_group:
            raise InvalidArgument("volume_mount_group is not supported")
    if kind in ("bind", "gluster") and which == "block":
        raise InvalidArgument(f"{kind} volumes have no block access")
    return cap


def fingerprint(cap):
    """What makes two capabilities 'the same' for idempotency checks."""
    fields = {"access": access_of(cap), "mode": int(cap.access_mode.mode)}
    if cap.HasField("mount"):
        fields["fs"] = cap.mount.fs_type
        fields["flags"] = sorted(cap.mount.mount_flags)
    return json.dumps(fields, sort_keys=True)


def capacity(rng):
    """(required, limit) in bytes; 0 means not given."""
    required, limit = rng.required_bytes, rng.limit_bytes
    if required < 0 or limit < 0:
        raise InvalidArgument("capacity_range values must not be negative")
    if limit and required > limit:
        raise InvalidArgument("capacity_range.required_bytes is larger than limit_bytes")
    return required, limit
