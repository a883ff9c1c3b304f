"""The on-disk lease store, in the reference plugin's format so that either plugin can take over
a node's leases:

    <dataDir>/<network>/<address>              "containerID\\r\\nifname", no trailing newline
    <dataDir>/<network>/last_reserved_ip.<N>   the address last reserved in range set N
    <dataDir>/<network>/lock                   flock(2)ed for a whole operation (the reference
                                               takes the same lock, so the two exclude each other)

plus one file of ours, `podplumb-leases`: an index of the leases, so that an operation reads one
file rather than every lease while no one else changed the directory (lease_index.py). The
reference plugin never takes it for a lease.

The index is trusted as far as the directory's ctime tells, which on a filesystem with coarse
timestamps (Linux before 6.13, or a filesystem without fine-grained ones) misses a change the
reference makes within the clock tick of our last one. So what the index says a container holds is
confirmed from its lease files before it is used; an address it lacks is found taken when the
reservation's link fails, and learned then; GC reads the lease files. What remains there: a lease
the reference made in that tick is not found by a DEL without prevResult; GC releases it.
"""

import contextlib
import fcntl
import ipaddress
import os

from cni.errors import CNIError, IO_FAILURE
from plugins.host_local import lease_index
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


def _holder(data: bytes) -> tuple[str, str | None]:
    """(container ID, ifname or None) from a lease file's content."""
    container_id, separator, ifname = data.decode(errors="replace").strip().partition(SEPARATOR)
    return container_id, ifname if separator else None


def _io_error(action: str, path: str, e: OSError) -> CNIError:
    return CNIError(IO_FAILURE, f"cannot {action} {path}", e.strerror or str(e))


class Store:
    def __init__(self, location: Location):
        self.path = location.path
        self._changed = False
        self._locked = False
        self._table: lease_index.Table | None = None   # the leases, read on first use
        self._indexed_as = None        # the directory state of the index _table was read from, if it was
        self._index_fd: int | None = None

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    @contextlib.contextmanager
    def locked(self):
        """Hold the network's lock for the whole operation; changes are made durable, and the index
        written for the directory's new state, on exit."""
        try:
            os.makedirs(self.path, 0o755, exist_ok=True)
            fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise _io_error("create the lease directory", self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._locked = True
            self._open_index()
            try:
                yield self
            finally:
                self._save_index()
            if self._changed:
                self._sync_directory()
        finally:
            self._locked = False
            os.close(fd)   # also releases the flock

    def leases(self) -> list[Lease]:
        """Every lease of the network."""
        return [_lease(address, words) for address, words in self._load().items()]

    def leases_of(self, container_id: str) -> list[Lease]:
        """The container's leases, whatever their ifname: from the index when it is current, each
        confirmed from its own file (the directory is read when one is not as the index says)."""
        found = self._find(container_id)
        if self._indexed_as is not None and not all(self._confirmed(lease) for lease in found):
            self.rescan()
            found = self._find(container_id)
        return found

    def taken(self, address: Address) -> bool:
        return str(address) in self._load()

    def rescan(self):
        """Read the lease files themselves, whatever the index says (under the lock, the index is
        written again on exit)."""
        self._table = self._scan()
        self._indexed_as = None

    def _find(self, container_id: str) -> list[Lease]:
        alone = lease_index.holder_words(container_id, None)
        first_word = alone + " "
        return [_lease(address, words) for address, words in self._load().items()
                if words.startswith(first_word) or words == alone]

    def _confirmed(self, lease: Lease) -> bool:
        on_disk = self.lease(lease.address)
        return on_disk is not None and on_disk.held_by(lease.container_id, lease.ifname)

    def _load(self) -> lease_index.Table:
        if self._table is None:
            self._table = self._read_index()
            if self._table is None:
                self._table = self._scan()
        return self._table

    def _open_index(self):
        """Created (when missing) before the operation's changes: its creation is then part of the
        state the operation writes it for."""
        path = os.path.join(self.path, lease_index.NAME)
        try:
            self._index_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise _io_error("open", path, e) from None

    def _read_index(self) -> lease_index.Table | None:
        """The index's leases when it is current. Outside the lock (CHECK, STATUS) it is only read:
        one written meanwhile is either for another state or incomplete."""
        try:
            if self._index_fd is not None:
                data = os.pread(self._index_fd, os.fstat(self._index_fd).st_size + 1, 0)
            else:
                with open(os.path.join(self.path, lease_index.NAME), "rb") as f:
                    data = f.read()
            current = lease_index.state(self.path)
        except OSError:
            return None
        table = lease_index.parse(data, current)
        if table is not None:
            self._indexed_as = current
        return table

    def _save_index(self):
        """Under the lock, after the operation's last change: record the leases for the directory's
        state now, unless the index already records it. A failure leaves an index for another state
        (or none), which only costs the next operation a reading of the lease files."""
        try:
            current = lease_index.state(self.path)
            if self._table is not None and current != self._indexed_as:
                lease_index.write(self._index_fd, lease_index.render(self._table, current))
        except OSError:
            pass
        finally:
            os.close(self._index_fd)
            self._index_fd = None

    def _scan(self) -> lease_index.Table:
        """The leases on disk. Under the lock, temporary files met on the way (left by a process
        killed mid-write: only the lock holder writes them) are removed, at no extra listing."""
        try:
            directory = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise _io_error("list leases in", self.path, e) from None
        found = {}
        try:
            for name in os.listdir(directory):
                if name.endswith(TEMP_SUFFIX):
                    if self._locked:
                        self._remove_temporary(name)
                    continue
                try:
                    address = ipaddress.ip_address(name)
                except ValueError:
                    continue   # lock, last_reserved_ip.N, the index
                try:       # os.open/os.read relative to the directory: half the time of open() per lease
                    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
                except OSError:
                    continue   # vanished
                try:
                    found[str(address)] = lease_index.holder_words(*_holder(_read_all(fd)))
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
                return Lease(address, *_holder(f.read()))
        except OSError:
            return None

    def reserve(self, address: Address, container_id: str, ifname: str) -> bool:
        """Create the lease file, complete or not at all; False when the address is taken."""
        final = os.path.join(self.path, str(address))
        temp = f"{final}.{os.getpid()}{TEMP_SUFFIX}"
        table = self._load()
        try:
            self._write(temp, lease_bytes(container_id, ifname))
            os.link(temp, final)   # fails if the address is taken, like O_EXCL, but never half-written
        except FileExistsError:
            holder = self.lease(address)   # one the index missed: learned for the rest of the operation
            if holder:
                table[str(address)] = lease_index.holder_words(holder.container_id, holder.ifname)
            return False
        except OSError as e:
            raise _io_error("write lease", final, e) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        table[str(address)] = lease_index.holder_words(container_id.strip(), ifname)
        self._changed = True
        return True

    def release(self, address: Address):
        path = os.path.join(self.path, str(address))
        table = self._load()
        try:
            os.unlink(path)
        except FileNotFoundError:
            table.pop(str(address), None)
            return
        except OSError as e:
            raise _io_error("remove lease", path, e) from None
        table.pop(str(address), None)
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


def _lease(address: str, words: str) -> Lease:
    return Lease(ipaddress.ip_address(address), *lease_index.holder(words))


def _read_all(fd: int) -> bytes:
    """The whole file: a lease holds a container ID, which may be long (one read is a lease's usual)."""
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data
