"""GlusterFS mechanics: server lists, FUSE mounts, and the gluster CLI for quotas.

Nothing here knows CSI or gRPC. Failures raise GlusterError subclasses that
name the servers and the volume, so the caller can map them to codes.

glusterd serves its management CLI read-write only on its unix socket
(`option glusterd-sockfile`, default /var/run/glusterd.socket); over TCP
(`--remote-host`, which has no port option either) it answers read-only
commands and refuses changes such as quotas. So volume checks and quotas go
through a glusterd socket of the cluster, and reachability of the servers
named in a volume is checked with a TCP connection to their management port.
"""

import errno
import os
import re
import socket
from dataclasses import dataclass

from csi import mounts

DEFAULT_PORT = 24007
CONNECT_TIMEOUT = 5          # seconds per server
ENFORCE_SECONDS = 1          # quota soft-timeout and hard-timeout where the driver enables quota
MAX_SERVERS_TEXT = 180       # with the volume name, one path component (255 bytes) of the state dir
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
_VOLUME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")     # glusterd's own rule for volume names


class GlusterError(Exception):
    """A Gluster operation failed."""


class BadParameter(GlusterError):
    """A server list or volume name that cannot be valid."""


class Unreachable(GlusterError):
    """No server of the list answers on its management port."""


class Busy(GlusterError):
    """glusterd is running another change of the volume (from anywhere in the cluster)."""


class VolumeUnusable(GlusterError):
    """The servers answer, but the volume does not exist or is not started."""


@dataclass(frozen=True)
class Server:
    host: str
    port: int = DEFAULT_PORT

    def __str__(self):
        return self.host if self.port == DEFAULT_PORT else f"{self.host}:{self.port}"


def parse_servers(text):
    """Servers of a `glusterServer` value: "host", "host:port", or a
    comma-separated list of them (the first one is asked first). All servers
    of one volume share the management port, as mount.glusterfs takes one."""
    if len(text or "") > MAX_SERVERS_TEXT:
        raise BadParameter(f"glusterServer is longer than {MAX_SERVERS_TEXT} characters")
    servers = []
    for item in (text or "").split(","):
        host, _, port = item.strip().partition(":")
        if not _HOST.match(host) or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise BadParameter(f"glusterServer {text!r}: {item.strip()!r} is not host or host:port")
        servers.append(Server(host, int(port) if port else DEFAULT_PORT))
    if len({s.port for s in servers}) > 1:
        raise BadParameter(f"glusterServer {text!r}: all servers must use the same port")
    if len({s.host for s in servers}) != len(servers):
        raise BadParameter(f"glusterServer {text!r} names a server twice")
    return tuple(servers)


def check_volume_name(name):
    if not _VOLUME.match(name or ""):
        raise BadParameter(f"glusterVolume {name!r} is not a Gluster volume name")
    return name


def describe(servers, volume):
    return f"Gluster volume {volume!r} on {','.join(map(str, servers))}"


# ------------------------------------------------------------------ checks

def reachable(servers, volume):
    """The first server that accepts a TCP connection on its management port."""
    for server in servers:
        try:
            socket.create_connection((server.host, server.port), CONNECT_TIMEOUT).close()
            return server
        except OSError:
            continue
    raise Unreachable(f"{describe(servers, volume)}: no server answers on its management port")


# ------------------------------------------------------------------ mounts

def mount(servers, volume, subdir, target):
    """Mount volume (or its sub-directory) with the FUSE client; backup servers
    are asked for the volume file when the first one is down."""
    source = f"{servers[0].host}:/{volume}" + (f"/{subdir}" if subdir else "")
    options = []
    if servers[0].port != DEFAULT_PORT:
        options.append(f"server-port={servers[0].port}")
    if len(servers) > 1:
        options.append("backup-volfile-servers=" + ":".join(s.host for s in servers[1:]))
    try:
        mounts.mount(source, target, "glusterfs", options)
    except mounts.CommandError as e:
        reachable(servers, volume)  # Unreachable says more than the mount helper does
        raise GlusterError(f"mount of {source} ({describe(servers, volume)}) failed: {e}") from e


def is_live_mount(path):
    """A mount point whose FUSE client still answers (a dead client gives
    ENOTCONN; statfs always asks the client, stat may be answered from cache)."""
    if not mounts.is_mountpoint(path):
        return False
    try:
        os.statvfs(path)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            return False
        raise
    return True


# ------------------------------------------------------------------- quota

class Management:
    """Volume checks and directory quotas through glusterd's management socket."""

    def __init__(self, glusterd_socket=""):
        self.socket = glusterd_socket

    def _gluster(self, *args, check=True):
        sock = [f"--glusterd-sock={self.socket}"] if self.socket else []
        proc = mounts.run("gluster", "--mode=script", *sock, *args, check=check)
        if proc.returncode != 0 and "Another transaction is in progress" in proc.stderr + proc.stdout:
            raise Busy(f"glusterd is busy with another change: {proc.stderr.strip()}; retry")
        return proc

    def check_volume(self, servers, volume):
        """Raise unless a server answers and the volume exists and is started."""
        reachable(servers, volume)
        proc = self._gluster("volume", "info", volume, check=False)
        text = proc.stdout + proc.stderr
        if proc.returncode != 0:
            if "does not exist" in text:
                raise VolumeUnusable(f"{describe(servers, volume)} does not exist")
            raise Unreachable(f"{describe(servers, volume)}: glusterd does not answer on "
                              f"{self.socket or 'its default socket'}: {text.strip()}")
        if not re.search(r"^Status:\s*Started\s*$", proc.stdout, re.MULTILINE):
            raise VolumeUnusable(f"{describe(servers, volume)} is not started")

    def limit(self, volume, directory, size):
        """Set the hard limit of /directory to size bytes, enabling quota on the
        volume first when it is off."""
        proc = self._gluster("volume", "quota", volume, "limit-usage", f"/{directory}",
                             f"{size}B", check=False)
        if proc.returncode != 0 and "quota command failed : Quota is disabled" in \
                proc.stdout + proc.stderr:
            self._enable(volume)
            proc = self._gluster("volume", "quota", volume, "limit-usage", f"/{directory}",
                                 f"{size}B", check=False)
        if proc.returncode != 0:
            raise GlusterError(f"cannot set quota of /{directory} on Gluster volume {volume!r} "
                               f"via glusterd: {(proc.stderr or proc.stdout).strip()}")

    def _enable(self, volume):
        """Turn quota on. Bricks trust a directory's cached size for
        soft-timeout seconds below the soft limit (default 60) and hard-timeout
        above it (default 5); where the driver turns quota on, it shortens both
        so that a full volume refuses writes within about a second."""
        proc = self._gluster("volume", "quota", volume, "enable", check=False)
        if proc.returncode != 0:
            if "already enabled" in proc.stdout + proc.stderr:
                return
            raise GlusterError(f"cannot enable quota on Gluster volume {volume!r} via glusterd: "
                               f"{(proc.stderr or proc.stdout).strip()}")
        for option in ("soft-timeout", "hard-timeout"):
            self._gluster("volume", "quota", volume, option, str(ENFORCE_SECONDS))

    def remove(self, volume, directory):
        """Drop the limit of /directory; no limit (no limit xattr: "No data
        available"), no quota or no directory is fine."""
        proc = self._gluster("volume", "quota", volume, "remove", f"/{directory}", check=False)
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 and not any(s in text for s in (
                "No data available", "Quota is disabled", "No such file or directory")):
            raise GlusterError(f"cannot remove quota of /{directory} on Gluster volume "
                               f"{volume!r} via glusterd: {text.strip()}")
