"""One pod interface's DHCP lease, kept by pyroute2's DHCP client (pyroute2.dhcp.client) for as long
as the pod lives: acquired, renewed at T1 (rebound at T2), released when the pod goes.

Each lease has a thread of its own that enters the pod's network namespace and runs the client's
asyncio loop there: the raw socket, the interface lookup and the MAC watcher all belong to the pod.
The daemon process itself never switches namespace.
"""

import asyncio
import logging
import os
import socket
import threading

from pyroute2.dhcp import fsm
from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig
from pyroute2.dhcp.leases import Lease

from cni import netlink

LOG = logging.getLogger("podplumb.dhcp")

LINK_POLL = 5.0          # how often a kept lease looks whether its interface still exists


class _KeptInMemory(Lease):
    """Leases live in the worker only (pyroute2's file lease would write <ifname>.lease.json into the
    working directory, and every pod's interface may be called eth0)."""

    def dump(self):
        pass

    @classmethod
    def load(cls, interface):
        return None


class Failed(Exception):
    pass


class LeaseWorker:
    def __init__(self, netns_fd: int, ifname: str, client_id: str, hostname: str | None, label: str):
        self.ifname = ifname
        self.label = label
        self._netns_fd = netns_fd
        self._config = ClientConfig(interface=ifname, lease_type=_KeptInMemory, handle_signals=False,
                                    client_id=client_id.encode(), host_name=hostname, vendor_id="podplumb")
        self._client = None
        self._ready = threading.Event()
        self._error = None
        self._loop = None
        self._stop = None
        self._release = True
        self._thread = threading.Thread(target=self._run, name=f"dhcp-{label}", daemon=True)

    # called from the service's threads
    def start(self, timeout: float) -> dict:
        """Acquire the lease; its address, prefix length and options, or Failed."""
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop(release=False)
            raise Failed(f"no DHCP lease for {self.ifname} within {timeout:g}s")
        if self._error:
            raise Failed(self._error)
        return self.lease()

    def lease(self) -> dict | None:
        """The current lease (renewals replace it), or None once it is gone."""
        lease = self._client.lease if self._client and self.alive() else None
        if lease is None:
            return None
        return {"ip": lease.ip, "prefixlen": lease.prefixlen, "routers": _option(lease, "routers") or [],
                "name_servers": _option(lease, "name_servers") or [], "domain": _option(lease, "domain_name"),
                "server": _option(lease, "server_id"), "expires_in": lease.expiration_in}

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, release: bool, timeout: float = 5.0):
        """End the client; with `release`, a DHCPRELEASE goes to the server first."""
        self._release = release
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # the lease's own thread
    def _run(self):
        try:
            netlink.enter(self._netns_fd, f"the pod of {self.label}")
        except OSError as e:
            self._fail(f"cannot enter the pod's network namespace: {e}")
            return
        finally:
            os.close(self._netns_fd)
        try:
            self._link_up()
        except Exception as e:
            self._fail(str(e))
            return
        try:
            asyncio.run(self._keep())
        except Exception as e:      # a broken client must end this lease, never the daemon
            LOG.exception("lease %s: client failed", self.label)
            self._fail(f"DHCP client failed: {e}")

    def _link_up(self):
        """The client sends on the interface: it must be up (the main plugin may not have done so yet).
        Not from inside the event loop: pyroute2's synchronous IPRoute runs a loop of its own."""
        with netlink.Namespace() as ns:       # this thread's namespace: the pod's
            link = ns.link(self.ifname)
            if link is None:
                raise Failed(f"interface {self.ifname} is missing from the pod")
            if not link.up:
                ns.set_link(link.index, state="up")

    async def _keep(self):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with AsyncDHCPClient(self._config) as client:
            self._client = client
            await client.bootstrap()
            bound = asyncio.ensure_future(client.wait_for_state(fsm.State.BOUND))
            stopped = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait((bound, stopped), return_when=asyncio.FIRST_COMPLETED)
            if not bound.done():
                bound.cancel()
                client.config.release = False
                return
            LOG.info("lease %s: %s/%s from %s", self.label, client.lease.ip, client.lease.prefixlen,
                     _option(client.lease, "server_id"))
            self._ready.set()
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), LINK_POLL)
                except asyncio.TimeoutError:
                    if not _link_exists(self.ifname):
                        LOG.warning("lease %s: interface gone, lease dropped", self.label)
                        self._release = False
                        break
            client.config.release = self._release

    def _fail(self, message: str):
        self._error = message
        self._ready.set()


def _option(lease: Lease, name: str):
    try:
        return getattr(lease, name)
    except LookupError:
        return None


def _link_exists(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)      # resolved in this thread's (the pod's) namespace
    except OSError:
        return False
    return True

