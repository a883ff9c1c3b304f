"""`podplumb daemon`: a warm process serving CNI calls on a unix socket (protocol: docs/daemon.md).

This process accepts, checks the caller's uid, greets, and hands each connection to the worker host
(podplumb.worker), which runs every call in one of its call processes, in the caller's network and
mount namespaces and root. In-daemon services (the overlay registry) run here, in this process.
Only the modules of `podplumb.install.PLUGINS` are ever run, whatever a request names.
SIGTERM/SIGINT: stop accepting, let in-flight calls finish (bounded), remove the socket.
With systemd socket activation (LISTEN_PID/LISTEN_FDS) the listening socket is fd 3.
"""

import argparse
import contextlib
import logging
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import threading

from cni import log
from podplumb import client
from podplumb.worker import Workers

LOG = logging.getLogger("podplumb.daemon")

SD_LISTEN_FDS_START = 3
GREETING_TIMEOUT = 1.0   # sending the greeting to a caller that may have left already


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="podplumb daemon", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", default=client.DEFAULT_SOCKET, help="unix socket to listen on (default %(default)s)")
    parser.add_argument("--max-requests", type=int, default=64,
                        help="calls served at once; beyond that a caller runs the plugin itself")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds to let in-flight calls finish on SIGTERM")
    parser.add_argument("--log-level", default="INFO", help="least severe level logged (default %(default)s)")
    parser.add_argument("--log-format", choices=log.FORMATS, default="text",
                        help="text lines, or one JSON object a line (default %(default)s)")
    parser.add_argument("--metrics-address", metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: none)")
    parser.add_argument("--gc-interval", type=float, default=0, metavar="SECONDS",
                        help="run `podplumb gc` this often: remove attachments whose pod namespace is gone "
                             "(default 0: never)")
    parser.add_argument("--gc-bin-dir", default="/opt/cni/bin",
                        help="the CNI bin dir whose executables gc's DELs run (default %(default)s)")
    parser.add_argument("--leases-dir", default="/var/lib/cni/networks",
                        help="host-local data dir whose leases the metrics count (default %(default)s)")
    parser.add_argument("--overlay-config", metavar="FILE",
                        help="a vxlan network config with a 'cluster' section: register this host in etcd "
                             "and keep the other hosts' routes, neighbours and FDB entries in step")
    parser.add_argument("--dhcp-socket", metavar="PATH",
                        help="where the DHCP lease service of the dhcp IPAM plugin listens (default: beside "
                             "--socket, <name>-dhcp.sock: /run/podplumb/cni-dhcp.sock); '' turns it off")
    args = parser.parse_args(argv)

    _configure_logging(args.log_level, args.log_format)
    server = None
    stop_asked = []          # a signal may come as soon as the socket exists, before the server does

    def on_signal(*_):
        stop_asked.append(True)
        if server:
            server.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    listener, owned = listen(args.socket)
    _unlink(args.socket + client.STALLED_SUFFIX)      # a new daemon: callers may ask it at once
    if dhcp_socket_path(args):    # the dhcp plugin, run by our workers, asks our own lease service
        os.environ.setdefault(client.DHCP_SOCKET_ENV, dhcp_socket_path(args))
    workers = Workers(args.drain_timeout)
    workers.start()          # forked before this process starts any thread (services below do)
    server = Server(listener, workers, args.max_requests)
    if stop_asked:
        server.stop()
    services = []
    code = 0
    try:
        try:
            services = start_services(args, workers)
        except Exception as e:   # etcd unreachable, a bad config: said once, and the socket goes
            LOG.error("%s", e)
            return 1
        LOG.info("serving on %s (pid %d)", args.socket, os.getpid())
        if not server.serve():
            LOG.error("the worker host died; stopping")
            code = 1
    finally:
        for service in reversed(services):
            service.stop()
        if owned:
            _unlink(args.socket)
            _unlink(args.socket + client.STALLED_SUFFIX)
            for made in _MADE_DIRS:
                with contextlib.suppress(OSError):   # not empty: somebody else's files are there now
                    os.rmdir(made)
        listener.close()
        if not workers.stop():
            LOG.warning("call(s) still running after %gs; exiting", args.drain_timeout)
    LOG.info("stopped")
    return code


def start_services(args, workers: Workers) -> list:
    """The services that live in the daemon process itself (each has stop()): calls run elsewhere,
    in the worker host's call processes, which reach a service through its own socket or files."""
    services = []
    if args.metrics_address:
        services.append(_start_metrics(args, workers))
    if args.gc_interval > 0:
        services.append(_PeriodicGC(args.gc_interval, args.gc_bin_dir))
    dhcp_socket = dhcp_socket_path(args)
    if dhcp_socket:
        from plugins.dhcp.service import LeaseService
        listener, owned = listen(dhcp_socket)
        services.append(LeaseService(listener, dhcp_socket if owned else None).start())
    if args.overlay_config:
        try:
            services.append(_start_overlay(args.overlay_config))
        except Exception as e:
            for service in reversed(services):
                service.stop()
            raise RuntimeError(f"overlay registry cannot start: {e}") from e
    return services


class _PeriodicGC:
    """`podplumb gc` every `interval` seconds, on a thread of this process: its DELs run the
    installed executables (which may forward to this very daemon)."""

    def __init__(self, interval: float, bin_dir: str):
        from cni import records
        self.interval, self.bin_dir = interval, bin_dir
        self.state_dir = records.state_dir(os.environ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gc", daemon=True)
        self._thread.start()

    def _run(self):
        from podplumb.gc import collect
        while not self._stop.wait(self.interval):
            lines = []
            try:
                collect(self.state_dir, self.bin_dir, out=lines.append)
                for line in lines if len(lines) > 1 else []:     # quiet while nothing is stale
                    LOG.info("gc: %s", line)
            except Exception:
                LOG.exception("gc failed")

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=60)


class _MetricsService:
    def __init__(self, server):
        self.server = server

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _start_metrics(args, workers: Workers):
    from podplumb import metrics     # prometheus_client: only when asked for
    try:
        from cni import records
        server = metrics.serve(args.metrics_address, metrics.LeaseCollector(args.leases_dir),
                               metrics.AttachmentCollector(records.state_dir(os.environ)))
    except (ValueError, OSError) as e:
        raise RuntimeError(f"metrics cannot start: {e}") from e
    workers.on_outcome = metrics.record_cni_call
    return _MetricsService(server)


def dhcp_socket_path(args) -> str:
    return client.dhcp_socket(args.socket) if args.dhcp_socket is None else args.dhcp_socket


def _start_overlay(config_path: str):
    from podplumb.overlay import registry, settings
    # NODE_NAME (a DaemonSet sets it from the downward API) names this host; else its hostname.
    overlay = registry.Registry(settings.load(config_path, node=os.environ.get("NODE_NAME")))
    overlay.start()
    return overlay


def _configure_logging(level: str, form: str = "text"):
    """The daemon's own stderr log. Each call's logs are also captured for its caller (request_logs)."""
    root = logging.getLogger("podplumb")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log.formatter(form))
    handler.setLevel(level.upper())
    root.addHandler(handler)      # from now on cni.log.configure leaves logging alone
    root.setLevel(logging.INFO)


_MADE_DIRS = []     # by listen(), for main() to remove


def listen(path: str) -> tuple[socket.socket, bool]:
    """The listening socket, and whether we created it (and so remove it on exit)."""
    inherited = _activated_socket()
    if inherited is not None:
        return inherited, False
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        # Only the last directory is made (/run/podplumb on a fresh node), and removed on exit.
        if not os.path.isdir(os.path.dirname(parent)):
            raise SystemExit(f"podplumb daemon: cannot listen on {path}: {os.path.dirname(parent)} does not exist")
        os.mkdir(parent, mode=0o700)
        _MADE_DIRS.append(parent)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)          # born 0600: no window where others may connect
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock, True


def _activated_socket() -> socket.socket | None:
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0"))
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    if count > 1:
        LOG.warning("systemd passed %d sockets; serving the first only", count)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise SystemExit("podplumb daemon: the activated socket is not a unix stream socket")
    os.set_inheritable(sock.fileno(), False)
    return sock


def _remove_stale(path: str):
    """A socket file nobody listens on is left by a daemon that died; another live daemon is an error."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SystemExit(f"podplumb daemon: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        _unlink(path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise SystemExit(f"podplumb daemon: another daemon is listening on {path}")


def _unlink(path: str):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Server:
    """Accepts, greets, and hands each connection to the worker host."""

    def __init__(self, listener: socket.socket, workers: Workers, max_requests: int):
        self.listener = listener
        self.workers = workers
        self.max_requests = max_requests
        self.in_flight = 0
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._served = 0

    def stop(self):
        """Signal-safe: ask the accept loop to end."""
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def serve(self) -> bool:
        """Serve until stop(); False if the worker host died."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            selector.register(self.workers, selectors.EVENT_READ)
            while not self._stopping:
                ready = {key.fileobj for key, _ in selector.select()}
                if self.workers in ready:
                    finished = self.workers.finished()
                    if finished is None:
                        return False
                    self.in_flight -= len(finished)
                if self.listener in ready:
                    self._accept()
        return True

    def _accept(self):
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        with conn:
            if self.in_flight >= self.max_requests:
                LOG.warning("busy (%d calls): a caller will run in-process", self.in_flight)
                return           # no greeting: the caller runs the plugin itself
            uid = _peer_uid(conn)
            if uid not in (0, os.getuid()):
                LOG.warning("refused a client of uid %d", uid)
                return
            try:
                conn.settimeout(GREETING_TIMEOUT)
                client.send_message(conn, [client.GREETING])
            except OSError as e:   # it gave up waiting (a daemon that was stopped, say): nothing was asked
                LOG.info("a caller left before the greeting (%s)", e)
                return
            self._served += 1
            self.workers.submit(conn, self._served)
            self.in_flight += 1


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]
