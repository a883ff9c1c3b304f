"""The on-disk lease store, in the reference plugin's format so that either plugin can take over
a node's leases:

    <dataDir>/<network>/<address>              "containerID\\r\\nifname", no trailing newline
    <dataDir>/<network>/last_reserved_ip.<N>   the address last reserved in range set N
    <dataDir>/<network>/lock                   flock(2)ed for a whole operation (the reference
                                               takes the same lock, so the two exclude each other)
"""

import contextlib
import fcntl
import ipaddress
import os

from cni.errors import CNIError, IO_FAILURE
from plugins.host_local.config import Location
from plugins.host_local.ranges import Address

SEPARATOR = "\r\n"
LOCK_NAME = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
TEMP_SUFFIX = ".podplumb-tmp"


class Lease:
    __slots__ = ("address", "container_id", "ifname")

    def __init__(self, address: Address, container_id: str,
                 ifname: str | None):    # None: the reference's older format, which stored only the container ID
        self.address = address
        self.container_id = container_id
        self.ifname = ifname

    def held_by(self, container_id: str, ifname: str) -> bool:
        return self.container_id == container_id and self.ifname == ifname

    def belongs_to(self, container_id: str, ifname: str) -> bool:
        """Held by this attachment; a lease of the older format names the container only."""
        return self.container_id == container_id and self.ifname in (ifname, None)

    def holder(self) -> str:
        return f"container {self.container_id}" + (f" (ifname {self.ifname})" if self.ifname else "")


def lease_bytes(container_id: str, ifname: str) -> bytes:
    return f"{container_id.strip()}{SEPARATOR}{ifname}".encode()


def _parse_lease(address: Address, data: bytes) -> Lease:
    text = data.decode(errors="replace").strip()
    container_id, separator, ifname = text.partition(SEPARATOR)
    return Lease(address, container_id, ifname if separator else None)


def _io_error(action: str, path: str, e: OSError) -> CNIError:
    return CNIError(IO_FAILURE, f"cannot {action} {path}", e.strerror or str(e))


class Store:
    def __init__(self, location: Location):
        self.path = location.path
        self._changed = False
        self._locked = False

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    @contextlib.contextmanager
    def locked(self):
        """Hold the network's lock for the whole operation; changes are made durable on exit."""
        try:
            os.makedirs(self.path, 0o755, exist_ok=True)
            fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise _io_error("create the lease directory", self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._locked = True
            yield self
            if self._changed:
                self._sync_directory()
        finally:
            self._locked = False
            os.close(fd)   # also releases the flock

    def leases(self) -> list[Lease]:
        """The leases on disk. Under the lock, temporary files met on the way (left by a process
        killed mid-write: only the lock holder writes them) are removed, at no extra listing."""
        try:
            directory = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise _io_error("list leases in", self.path, e) from None
        found = []
        try:
            for name in os.listdir(directory):
                if name.endswith(TEMP_SUFFIX):
                    if self._locked:
                        self._remove_temporary(name)
                    continue
                try:
                    address = ipaddress.ip_address(name)
                except ValueError:
                    continue   # lock, last_reserved_ip.N
                try:       # os.open/os.read relative to the directory: half the time of open() per lease
                    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
                except OSError:
                    continue   # vanished
                try:
                    found.append(_parse_lease(address, _read_all(fd)))
                except OSError:
                    continue   # not a file
                finally:
                    os.close(fd)
        except OSError as e:
            raise _io_error("list leases in", self.path, e) from None
        finally:
            os.close(directory)
        return found

    def lease(self, address: Address) -> Lease | None:
        """The lease of one address, None when there is none (one file read, no listing)."""
        try:
            with open(os.path.join(self.path, str(address)), "rb") as f:
                return _parse_lease(address, f.read())
        except OSError:
            return None

    def reserve(self, address: Address, container_id: str, ifname: str) -> bool:
        """Create the lease file, complete or not at all; False when the address is taken."""
        final = os.path.join(self.path, str(address))
        temp = f"{final}.{os.getpid()}{TEMP_SUFFIX}"
        try:
            self._write(temp, lease_bytes(container_id, ifname))
            os.link(temp, final)   # fails if the address is taken, like O_EXCL, but never half-written
        except FileExistsError:
            return False
        except OSError as e:
            raise _io_error("write lease", final, e) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        self._changed = True
        return True

    def release(self, address: Address):
        path = os.path.join(self.path, str(address))
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise _io_error("remove lease", path, e) from None
        self._changed = True

    def read_last_reserved(self, index: int) -> str | None:
        try:
            with open(self._last_reserved_path(index)) as f:
                return f.read()
        except (OSError, UnicodeDecodeError):
            return None   # lost round-robin position, not an error

    def write_last_reserved(self, index: int, text: str | None):
        """Record (or with None, forget) the last address reserved in range set `index`."""
        path = self._last_reserved_path(index)
        try:
            if text is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                temp = path + TEMP_SUFFIX
                self._write(temp, text.encode())
                os.replace(temp, path)
        except OSError as e:
            raise _io_error("write", path, e) from None
        self._changed = True

    def _remove_temporary(self, name: str):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.path, name))

    def unwritable_reason(self) -> str | None:
        """Why ADD could not write here, or None. Creates nothing."""
        path = self.path
        while not os.path.exists(path):
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        if not os.path.isdir(path):
            return f"{path} is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable"
        return None

    def _last_reserved_path(self, index: int) -> str:
        return os.path.join(self.path, f"{LAST_RESERVED_PREFIX}{index}")

    @staticmethod
    def _write(path: str, data: bytes):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync_directory(self):
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_all(fd: int) -> bytes:
    """The whole file: a lease holds a container ID, which may be long (one read is a lease's usual)."""
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data
