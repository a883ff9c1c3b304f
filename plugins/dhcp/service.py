"""The DHCP lease service: lives in the `podplumb daemon` process (as the reference's `dhcp daemon`),
behind a unix socket of its own, because a lease outlives the call that asked for it: plugin calls
run in short-lived processes, the lease's client must run for the pod's whole life.

Leases are keyed by (network, container ID, ifname), the DHCP client identifier is
`<container ID>/<network>/<ifname>` (the reference's), so a repeated ADD returns the lease it has.
They are kept in memory: a daemon that stops keeps the server's leases (it sends no release, the
pods keep their addresses) but no longer renews them.
"""

import contextlib
import logging
import os
import socket
import threading

from cni.errors import CHECK_FAILED, DECODE_FAILURE, INVALID_ENVIRONMENT, TRY_AGAIN_LATER
from plugins.dhcp import protocol

LOG = logging.getLogger("podplumb.dhcp")

ACQUIRE_TIMEOUT = 20.0
CONNECTION_TIMEOUT = 10.0


class LeaseService:
    """Serves on `listener` (made mode 0600 by the daemon: only its own user may ask)."""

    def __init__(self, listener: socket.socket, path: str | None, acquire_timeout: float = ACQUIRE_TIMEOUT):
        self.listener = listener
        self.path = path                 # removed on stop when we made it
        self.acquire_timeout = acquire_timeout
        self._leases: dict[tuple, "LeaseWorker"] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_forever, name="dhcp-service", daemon=True)

    def start(self) -> "LeaseService":
        self._thread.start()
        LOG.info("DHCP lease service on %s", self.path or "an inherited socket")
        return self

    def stop(self):
        """Stop serving; the clients end without releasing (the pods keep their addresses)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        with self._lock:
            workers = list(self._leases.values())
            self._leases.clear()
        for worker in workers:
            worker.stop(release=False)

    def _accept_forever(self):
        while not self._stopping:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                if self._stopping:
                    return
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name="dhcp-call").start()

    def _serve(self, conn: socket.socket):
        with conn:
            fds = []
            try:
                conn.settimeout(CONNECTION_TIMEOUT)
                request, fds = protocol.receive(conn, with_fds=True)
                conn.settimeout(None)
                reply = self.handle(request, fds)
                fds = []                         # handed over (or closed) by handle
                conn.settimeout(CONNECTION_TIMEOUT)
                protocol.send(conn, reply)
            except (OSError, protocol.ProtocolError) as e:
                LOG.warning("DHCP request failed: %s", e)
            finally:
                for fd in fds:
                    os.close(fd)

    def handle(self, request: dict, fds: list) -> dict:
        """One request: {"command", "network", "containerID", "ifname", ...} -> {"lease": ...} or {"error": ...}.
        Takes ownership of `fds`."""
        netns_fd = fds[0] if fds else None
        for extra in fds[1:]:
            os.close(extra)
        command = request.get("command") if isinstance(request, dict) else None
        try:
            if command is None:
                return _error(DECODE_FAILURE, "a DHCP request is a JSON object with a command")
            if command == "GC":
                return self._gc(request.get("network"), request.get("valid") or [])
            if command == "STATUS":
                return {"ok": True}
            key = (request.get("network"), request.get("containerID"), request.get("ifname"))
            if not all(isinstance(part, str) and part for part in key):
                return _error(INVALID_ENVIRONMENT, "a DHCP request needs network, containerID and ifname")
            with self._key_lock(key):
                if command == "ADD":
                    reply, netns_fd = self._add(key, netns_fd, request.get("hostname")), None
                    return reply
                if command == "DEL":
                    return self._delete(key)
                if command == "CHECK":
                    return self._check(key)
            return _error(INVALID_ENVIRONMENT, f"unknown DHCP request {command!r}")
        finally:
            if netns_fd is not None:
                os.close(netns_fd)

    def _key_lock(self, key: tuple) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _add(self, key: tuple, netns_fd: int | None, hostname: str | None) -> dict:
        with self._lock:
            worker = self._leases.get(key)
        if worker is not None and worker.alive() and worker.lease():
            if netns_fd is not None:
                os.close(netns_fd)
            return {"lease": worker.lease()}
        if netns_fd is None:
            return _error(INVALID_ENVIRONMENT, "ADD needs the pod's network namespace")
        # Imported at the first lease, not when the daemon starts: pyroute2.dhcp and asyncio would
        # hold up the daemon's first answers.
        from plugins.dhcp.lease import Failed, LeaseWorker
        network, container_id, ifname = key
        worker = LeaseWorker(netns_fd, ifname, f"{container_id}/{network}/{ifname}", hostname,
                             label=f"{network}/{container_id}/{ifname}")
        try:
            lease = worker.start(self.acquire_timeout)
        except Failed as e:
            return _error(TRY_AGAIN_LATER, f"no DHCP lease for {ifname}", str(e))
        with self._lock:
            self._leases[key] = worker
        return {"lease": lease}

    def _delete(self, key: tuple) -> dict:
        with self._lock:
            worker = self._leases.pop(key, None)
            self._key_locks.pop(key, None)
        if worker is not None:
            worker.stop(release=True)
            LOG.info("lease %s released", worker.label)
        return {"ok": True}

    def _check(self, key: tuple) -> dict:
        with self._lock:
            worker = self._leases.get(key)
        lease = worker.lease() if worker else None
        if lease is None:
            return _error(CHECK_FAILED, f"no DHCP lease kept for {key[2]} of container {key[1]}",
                          "the daemon may have restarted since the ADD, or the lease was lost")
        return {"lease": lease}

    def _gc(self, network, valid: list) -> dict:
        keep = {(a.get("containerID"), a.get("ifname")) for a in valid if isinstance(a, dict)}
        with self._lock:
            stale = [k for k in self._leases if k[0] == network and (k[1], k[2]) not in keep]
        for key in stale:
            self._delete(key)
        return {"ok": True, "released": len(stale)}


def _error(code: int, msg: str, details: str = "") -> dict:
    return {"error": {"code": code, "msg": msg, "details": details}}

