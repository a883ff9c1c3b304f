"""`podplumb daemon`: a warm process serving CNI calls on a unix socket (framing: podplumb.client).

Each connection gets a thread that runs the same `skel.run` handler as a standalone executable.
Only the modules of `podplumb.install.PLUGINS` are ever run, whatever a request names.
SIGTERM/SIGINT: stop accepting, let in-flight calls finish (bounded), remove the socket.
With systemd socket activation (LISTEN_PID/LISTEN_FDS) the listening socket is fd 3.
"""

import argparse
import contextlib
import io
import logging
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import time

from cni import log, skel
from cni.errors import INVALID_ENVIRONMENT
from podplumb import client
from podplumb.install import PLUGINS

LOG = logging.getLogger("podplumb.daemon")

SD_LISTEN_FDS_START = 3
READ_TIMEOUT = 10.0      # a greeted client sends its request at once
WRITE_TIMEOUT = 10.0
_NAMES = {module: name for name, module in PLUGINS.items()}
_LOG_FORMAT = logging.Formatter(log.FORMAT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="podplumb daemon", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", default=client.DEFAULT_SOCKET, help="unix socket to listen on (default %(default)s)")
    parser.add_argument("--max-requests", type=int, default=64,
                        help="calls served at once; beyond that a caller runs the plugin itself")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds to let in-flight calls finish on SIGTERM")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--overlay-config", metavar="FILE",
                        help="a vxlan network config with a 'cluster' section: register this host in etcd "
                             "and keep the other hosts' routes, neighbours and FDB entries in step")
    args = parser.parse_args(argv)

    _configure_logging(args.log_level)
    listener, owned = listen(args.socket)
    plugins = {}
    server = Server(listener, plugins, args.max_requests)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    overlay = None
    try:
        if args.overlay_config:
            try:
                overlay = _start_overlay(args.overlay_config)
            except Exception as e:   # etcd unreachable, a bad config: said once, and the socket goes
                LOG.error("overlay registry cannot start: %s", e)
                return 1
        # Warm up while already serving: a socket-activated first call is answered as soon as possible
        # (it waits for the imports it needs, no longer).
        threading.Thread(target=warm_up, args=(plugins,), daemon=True, name="warm-up").start()
        LOG.info("serving on %s (pid %d)", args.socket, os.getpid())
        server.serve()
    finally:
        if overlay:
            overlay.stop()
        if owned:
            _unlink(args.socket)
        listener.close()
    if not server.drain(args.drain_timeout):
        LOG.warning("%d call(s) still running after %gs; exiting", server.in_flight, args.drain_timeout)
    LOG.info("stopped")
    return 0


def _start_overlay(config_path: str):
    from podplumb.overlay import registry, settings
    # NODE_NAME (a DaemonSet sets it from the downward API) names this host; else its hostname.
    overlay = registry.Registry(settings.load(config_path, node=os.environ.get("NODE_NAME")))
    overlay.start()
    return overlay


def _configure_logging(level: str):
    """The daemon's own stderr log. Each call's logs are also captured for its caller (request_logs)."""
    root = logging.getLogger("podplumb")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LOG_FORMAT)
    handler.setLevel(level.upper())
    root.addHandler(handler)      # from now on cni.log.configure leaves logging alone
    root.setLevel(logging.INFO)


def warm_up(plugins: dict):
    """Import every plugin we may serve, and pyroute2, so that no call pays for it."""
    started = time.monotonic()
    for name, module in PLUGINS.items():
        try:
            plugins[module] = skel.load_plugin(module)
        except ImportError as e:
            LOG.info("plugin %s not available here: %s", name, e)
    from pyroute2 import IPRoute
    with IPRoute() as ipr:         # loads the message classes a first call would otherwise load
        ipr.get_links()
        ipr.get_addr()
        ipr.get_routes()
    LOG.info("warm in %.2fs: %s", time.monotonic() - started,
             ", ".join(name for name, module in PLUGINS.items() if module in plugins))


def listen(path: str) -> tuple[socket.socket, bool]:
    """The listening socket, and whether we created it (and so remove it on exit)."""
    inherited = _activated_socket()
    if inherited is not None:
        return inherited, False
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700)
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
    def __init__(self, listener: socket.socket, plugins: dict, max_requests: int):
        self.listener = listener
        self.plugins = plugins
        self.max_requests = max_requests
        self.in_flight = 0
        self._idle = threading.Condition()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._served = 0

    def stop(self):
        """Signal-safe: ask the accept loop to end."""
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def serve(self):
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                if any(key.fileobj is self.listener for key, _ in selector.select()):
                    self._accept()

    def _accept(self):
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        with self._idle:
            if self.in_flight >= self.max_requests:
                conn.close()         # no greeting: the caller runs the plugin itself
                LOG.warning("busy (%d calls): a caller will run in-process", self.in_flight)
                return
            self.in_flight += 1
            self._served += 1
            number = self._served
        threading.Thread(target=self._serve_connection, args=(conn, number), daemon=True,
                         name=f"cni-{number}").start()

    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._idle:
            while self.in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def _serve_connection(self, conn: socket.socket, number: int):
        try:
            with conn:
                handle_connection(conn, self.plugins, number)
        except Exception:      # one bad connection never takes the daemon down
            LOG.exception("call %d: connection failed", number)
        finally:
            with self._idle:
                self.in_flight -= 1
                self._idle.notify_all()


def handle_connection(conn: socket.socket, plugins: dict, number: int):
    uid = _peer_uid(conn)
    if uid not in (0, os.getuid()):
        LOG.warning("call %d: refused a client of uid %d", number, uid)
        return
    conn.settimeout(WRITE_TIMEOUT)
    client.send_message(conn, [client.GREETING])
    try:
        module, env, stdin = parse_request(client.recv_message(conn, time.monotonic() + READ_TIMEOUT))
    except (OSError, client.FrameError, ValueError) as e:
        LOG.warning("call %d: bad or missing request: %s", number, e)
        return
    started = time.monotonic()
    with request_logs(env) as captured:
        stdout, code = serve(plugins, module, env, stdin)
    LOG.info("call %d: %s %s container=%s ifname=%s -> exit %d in %.3fs", number, _NAMES.get(module, repr(module)),
             env.get("CNI_COMMAND", "?"), env.get("CNI_CONTAINERID", "-"), env.get("CNI_IFNAME", "-"),
             code, time.monotonic() - started)
    conn.settimeout(WRITE_TIMEOUT)
    try:
        client.send_message(conn, [str(code).encode(), stdout, captured.getvalue().encode(errors="replace")])
    except OSError as e:
        LOG.warning("call %d: the caller left before the answer: %s", number, e)


def serve(plugins: dict, module: str, env: dict, stdin: bytes) -> tuple[bytes, int]:
    """One CNI call, exactly as the standalone executable would answer it."""
    if module not in _NAMES:
        return _refuse(stdin, f"the podplumb daemon does not serve {module!r}",
                       f"known plugins: {', '.join(sorted(PLUGINS))}")
    plugin = plugins.get(module)
    if plugin is None:
        try:
            plugin = plugins[module] = skel.load_plugin(module)
        except ImportError as e:
            return _refuse(stdin, f"plugin module {module!r} is not installed with the daemon", str(e))
    return skel.run(plugin, env, stdin)


def _refuse(stdin: bytes, msg: str, details: str) -> tuple[bytes, int]:
    LOG.warning("%s", msg)
    return client.error_reply(stdin, INVALID_ENVIRONMENT, msg, details)


def parse_request(fields: list) -> tuple[str, dict, bytes]:
    """[module, stdin, key1, value1, ...] -> (module, env, stdin)."""
    if len(fields) < 2 or len(fields) % 2:
        raise ValueError(f"a request has module, stdin and key/value pairs; got {len(fields)} fields")
    names = [os.fsdecode(f) for f in fields[2:]]
    return fields[0].decode(), dict(zip(names[::2], names[1::2])), fields[1]


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


@contextlib.contextmanager
def request_logs(env: dict):
    """Capture this thread's podplumb logs for one call: what the standalone executable would print on
    stderr (at the call's PODPLUMB_LOG_LEVEL), and PODPLUMB_LOG_FILE when the call names one."""
    ident = threading.get_ident()
    root = logging.getLogger("podplumb")
    captured = io.StringIO()
    handlers = [logging.StreamHandler(captured)]
    handlers[0].setLevel(log.level(env.get("PODPLUMB_LOG_LEVEL", "WARNING")))
    if env.get("PODPLUMB_LOG_FILE"):
        try:
            handlers.append(logging.FileHandler(env["PODPLUMB_LOG_FILE"]))
            handlers[-1].setLevel(logging.INFO)
        except OSError as e:
            LOG.warning("cannot open log file %s: %s", env["PODPLUMB_LOG_FILE"], e)
    for handler in handlers:
        handler.setFormatter(_LOG_FORMAT)
        handler.addFilter(lambda record: record.thread == ident)
        root.addHandler(handler)
    try:
        yield captured
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
