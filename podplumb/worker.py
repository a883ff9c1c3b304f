"""The node daemon's call workers: every CNI call runs in a call process, never in the daemon.

At start the daemon forks one worker host, before it starts any thread. The host imports every
plugin once, stays single-threaded, and keeps a few call processes forked ahead. The daemon passes
each connection (SCM_RIGHTS over a SOCK_SEQPACKET pair) to whichever call process waits; that process
- reads the request and the caller's namespaces that ride on it (podplumb.client),
- enters the caller's network and mount namespaces and root (podplumb.caller),
- takes the attachment's lock (network, container ID, ifname): one operation at a time per attachment,
- runs the plugin exactly as the standalone executable would, and answers.
Then it waits for the next call: a fork per call, and the pages a call copies from the host, cost
more than a small call itself. Each call enters its own caller's namespaces and root (a step skipped
when they are those of the previous call: a node's runtime makes its calls from one place), so
nothing of where one call ran carries over to the next. A call process exits after an interrupted
call, after MAX_CALLS calls, when it ends a call while MOST_WAITING others wait (a burst of calls is
over), or when it has waited IDLE_TIMEOUT for one. Calls run in parallel on every CPU. The daemon
and the worker host never switch namespaces.

A call is bounded in time (under the caller's own timeout, leaving room for a rollback). An ADD
whose caller went away, ran out of time, or whose daemon died is interrupted, rolled back (its undo
steps, then a DEL of the same attachment, still under the lock) and answered with code 11 if anyone
still listens. Other commands run to their end when the caller leaves; their answer is dropped.
"""

import contextlib
import ctypes
import fcntl
import gc
import hashlib
import io
import json
import logging
import mmap
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

from cni import log, netlink, skel
from cni.errors import DECODE_FAILURE, INTERNAL, INVALID_ENVIRONMENT, TRY_AGAIN_LATER
from podplumb import caller, client
from podplumb.install import PLUGINS

LOG = logging.getLogger("podplumb.daemon")

READ_TIMEOUT = 10.0        # a greeted client sends its request at once
WRITE_TIMEOUT = 10.0
SPARES = 2                 # call processes waiting for a call, at least
MOST_WAITING = 4           # a call process that ends a call while this many wait exits (a burst is over)
MAX_CALLS = 200            # calls served by one call process
IDLE_TIMEOUT = 30.0        # a call process that waited this long for a call exits
UNDO_TIMEOUT = 30.0        # the DEL that rolls back an abandoned ADD; then the call process is killed
NAMES = {module: name for name, module in PLUGINS.items()}
_PR_SET_PDEATHSIG = 1
_INTERRUPTS = {signal.SIGALRM: "it ran out of time", signal.SIGIO: "the caller went away",
               signal.SIGUSR2: "the daemon stopped"}
_LOCKED_COMMANDS = ("ADD", "DEL", "CHECK")
_COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")


class Workers:
    """The daemon's handle on its worker host."""

    def __init__(self, drain_timeout: float):
        self.drain_timeout = drain_timeout
        self.channel = None
        self.pid = None
        self.on_outcome = None     # (plugin, command, code, seconds) of every call answered: metrics

    def start(self):
        """Fork the worker host. Call before the daemon starts any thread."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                code = _Host(theirs, parent, self.drain_timeout).run()
            except BaseException:
                LOG.exception("worker host failed")
            finally:
                os._exit(code)
        theirs.close()
        self.channel, self.pid = ours, pid

    def fileno(self) -> int:
        return self.channel.fileno()

    def submit(self, conn: socket.socket, number: int):
        self.channel.sendmsg([b"call %d" % number], client.rights([conn.fileno()]))

    def finished(self) -> list[int] | None:
        """Numbers of the calls that ended since the last look; None when the worker host is gone."""
        try:
            message = self.channel.recv(256, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return []
        except OSError:
            return None
        if not message:
            return None
        kind, _, rest = message.partition(b" ")
        if kind == b"outcome" and self.on_outcome:
            with contextlib.suppress(ValueError, TypeError):
                self.on_outcome(*json.loads(rest))
        return [int(rest)] if kind == b"done" else []

    def stop(self) -> bool:
        """No more calls; wait (bounded) until those running have ended. Whether they all did."""
        self.channel.close()
        deadline = time.monotonic() + self.drain_timeout + 5
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status) == 0
            time.sleep(0.02)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        return False


def _die_with_parent(signum: int, parent: int):
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:      # it died before the line above
        os.kill(os.getpid(), signum)


def _received_fds(ancdata) -> list[int]:
    fds = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder) for i in range(0, usable, 4)]
    return fds


class _Host:
    """The worker host: warm, single-threaded. It keeps at least SPARES call processes waiting on the
    channel; each says on a pipe when it takes a call and when it is free again, and the host forks
    another when too few wait, so no call waits for a fork."""

    def __init__(self, channel: socket.socket, parent: int, drain_timeout: float):
        self.channel = channel
        self.parent = parent
        self.drain_timeout = drain_timeout
        self.calls = {}                 # pid -> call number; a child not in it waits for a call
        self.stopping = False
        self.plugins = {}

    def run(self) -> int:
        _die_with_parent(signal.SIGKILL, self.parent)
        for signum in (signal.SIGINT, signal.SIGTERM):   # the daemon decides when we stop: it closes the channel
            signal.signal(signum, signal.SIG_IGN)
        warm_up(self.plugins)
        gc.freeze()          # what is warm now is never collected: a call process does not copy it to scan it
        self.locks = os.memfd_create("podplumb-attachment-locks")
        self.own_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.took_r, self.took_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.took_r, False)
        self.waiting = WaitingCount()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for _ in range(SPARES):
            self._fork_call_process()
        poller = select.poll()
        poller.register(self.channel, select.POLLRDHUP)    # the daemon closed it: stop (calls are the spares')
        poller.register(self.took_r, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        deadline = None
        while not self.stopping or (self.calls and time.monotonic() < deadline):
            timeout = None if deadline is None else max(0, deadline - time.monotonic()) * 1000
            for fd, events in poller.poll(timeout):
                if fd == self.channel.fileno():
                    self.stopping = True
                    deadline = time.monotonic() + self.drain_timeout
                    poller.unregister(self.channel)
                elif fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
            self._reap()
        return 1 if self.calls else 0

    def _fork_call_process(self):
        host = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                gc.disable()             # collected between calls only: a collection copies the pages it scans
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _die_with_parent(signal.SIGUSR2, host)
                code = _CallProcess(self).serve()
            except BaseException:
                LOG.exception("call process failed")
            finally:
                logging.shutdown()
                os._exit(code)
        self.waiting.add(1)

    def _read_took(self):
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.took_r, 65536):
                data += chunk
        for line in data.splitlines():
            kind, pid, number = line.split()
            pid, number = int(pid), int(number)
            if kind == b"took":
                self.calls[pid] = number
                if not self.stopping and self.waiting.value() < SPARES:
                    self._fork_call_process()
            elif self.calls.pop(pid, None) is not None:      # free: it ended a call and waits again
                self._done(number)

    def _done(self, number: int):
        with contextlib.suppress(OSError):
            self.channel.send(b"done %d" % number)

    def _reap(self):
        self._read_took()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            self._read_took()      # what it said before it ended
            if pid not in self.calls:      # a waiting call process that ended (idle, its last call served, killed)
                if os.waitstatus_to_exitcode(status) != 0:
                    LOG.warning("a waiting call process ended (%s)", _exit_reason(status))
                    if os.waitstatus_to_exitcode(status) < 0:     # killed while it was counted as waiting
                        self.waiting.add(-1)
                if not self.stopping and self.waiting.value() < SPARES:
                    self._fork_call_process()
                continue
            self._done(self.calls.pop(pid))


class _CallProcess:
    """One call process's life: calls, one after another."""

    def __init__(self, host: _Host):
        self.host = host
        self.entered = None     # identity of the caller namespaces and root this process is in

    def serve(self) -> int:
        """Calls until it should stop; the host counted this process as waiting when it forked it."""
        waiting = self.host.waiting
        for served in range(MAX_CALLS):
            call = self._next_call(idle=served > 0)
            waiting.add(-1)
            if call is None:
                return 0
            number, conn = call
            os.write(self.host.took_w, b"took %d %d\n" % (os.getpid(), number))
            self.entered = Call(conn, number, self.host.plugins, self.host.locks, self.host.own_root,
                                self.host.channel, self.entered).run()
            if self.entered is None or served + 1 == MAX_CALLS or not waiting.add_unless(MOST_WAITING):
                return 0
            gc.collect()
            os.write(self.host.took_w, b"free %d %d\n" % (os.getpid(), number))
        return 0

    def _next_call(self, idle: bool) -> tuple | None:
        """(number, connection) of the next call on the channel; None when the daemon stops or, for
        a process that served calls already, when none came for IDLE_TIMEOUT. The channel's file is
        shared with every waiting process: never made non-blocking, polled and read with DONTWAIT."""
        channel = self.host.channel
        deadline = time.monotonic() + IDLE_TIMEOUT if idle else None
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([channel], [], [], left)[0]:
                    return None
            try:
                flags = socket.MSG_DONTWAIT if deadline is not None else 0
                message, ancdata, _, _ = channel.recvmsg(64, socket.CMSG_SPACE(4), flags)
            except BlockingIOError:
                continue                  # another process took it
            fds = _received_fds(ancdata)
            if not message:               # the daemon is stopping
                return None
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            return int(message.split()[1]), socket.socket(fileno=fds[0])


class WaitingCount:
    """How many call processes wait for a call: a counter in memory shared by the worker host and its
    call processes, which change it themselves (under a lock) as they start and stop waiting."""

    def __init__(self):
        self.fd = os.memfd_create("podplumb-waiting-calls")
        os.ftruncate(self.fd, 8)
        self.shared = mmap.mmap(self.fd, 8)

    def value(self) -> int:
        return struct.unpack_from("=q", self.shared)[0]

    def add(self, delta: int):
        with self._locked():
            struct.pack_into("=q", self.shared, 0, self.value() + delta)

    def add_unless(self, limit: int) -> bool:
        """Count one more waiting process, unless `limit` wait already; whether it did."""
        with self._locked():
            if self.value() >= limit:
                return False
            struct.pack_into("=q", self.shared, 0, self.value() + 1)
            return True

    @contextlib.contextmanager
    def _locked(self):
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)


def identity(fds) -> tuple:
    return tuple((st.st_dev, st.st_ino) for st in map(os.fstat, fds))


def _exit_reason(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


def warm_up(plugins: dict):
    """Import every plugin we may serve, and pyroute2 (tc and policy routing use it), so that no call
    pays for it."""
    started = time.monotonic()
    for name, module in PLUGINS.items():
        try:
            plugins[module] = skel.load_plugin(module)
        except ImportError as e:
            LOG.info("plugin %s not available here: %s", name, e)
    from cni.pyroute2_lite import IPRoute
    with IPRoute() as ipr:         # loads the message classes a first call would otherwise load
        ipr.link("get", index=1)
    LOG.info("warm in %.2fs: %s", time.monotonic() - started,
             ", ".join(name for name, module in PLUGINS.items() if module in plugins))


class Abandoned(BaseException):
    """Raised in a call's process to stop it: no plugin code catches it, every Rollback undoes."""


class RequestTooLarge(Exception):
    pass


class Call:
    """One CNI call, in a call process. `entered`: the identity of the caller namespaces and root the
    process is in (those of its previous call), None for a process still where the host is."""

    def __init__(self, conn: socket.socket, number: int, plugins: dict, locks: int, own_root: int,
                 channel: socket.socket | None = None, entered: tuple | None = None):
        self.channel = channel       # to the daemon's main process: this call's outcome, for metrics
        self.conn = conn
        self.number = number
        self.plugins = plugins
        self.locks = locks
        self.own_root = own_root
        self.entered = entered

    def run(self) -> tuple | None:
        """Serve the call. Returns the identity of the namespaces and root the process is in when it
        may serve another call, None when it must not (an interrupted call, namespaces half entered)."""
        with self.conn:
            return self._run()

    def _run(self) -> tuple | None:
        try:
            fields, fds = receive_request(self.conn, time.monotonic() + READ_TIMEOUT)
        except RequestTooLarge as e:
            self._reply(*client.error_reply(b"", DECODE_FAILURE, "the request to the node daemon is too large", str(e)))
            return self.entered
        except (OSError, client.FrameError) as e:
            LOG.info("call %d: no request (%s): the caller went away", self.number, e)
            return self.entered
        try:
            module, env, stdin = parse_request(fields)
        except ValueError as e:
            LOG.warning("call %d: bad request: %s", self.number, e)
            return self.entered
        try:
            if len(fds) != len(client.CALLER_NAMESPACES):
                for fd in fds:
                    os.close(fd)
                fds = []
                fds = caller.open_by_pid(caller.peer_pid(self.conn))
            here = identity(fds)
            if here != self.entered:
                self.entered = None         # until entered: a failure half-way leaves the process unusable
                caller.enter(*fds, self.own_root)
        except caller.CallerUnreachable as e:
            LOG.warning("call %d: %s", self.number, e)
            self._reply(*client.error_reply(stdin, INVALID_ENVIRONMENT, "the node daemon cannot work where its "
                                            "caller is", str(e)))
            return None
        finally:
            for fd in fds:
                os.close(fd)
        return here if self._serve(module, env, stdin) else None

    def _serve(self, module: str, env: dict, stdin: bytes) -> bool:
        """Whether the call ran to its end (not interrupted)."""
        command = env.get("CNI_COMMAND", "")
        budget = call_budget(client.request_timeout(env))
        started = time.monotonic()
        guard = Guard(self.conn, budget, interrupt_on_hangup=command == "ADD")
        try:
            with guard, attachment_lock(self.locks, attachment(env, stdin)), kernel_teardowns_after_answer():
                try:
                    with request_logs(env) as captured:
                        stdout, code = serve(self.plugins, module, env, stdin)
                    guard.check()
                except Abandoned as e:
                    guard.disarm()
                    self._abandoned(module, env, stdin, str(e), started)
                    return False
                guard.disarm()
                self._log(module, env, code, started)
                self._report_outcome(module, command, _cni_code(stdout, code), started)
                answered = self._reply(stdout, code, captured.getvalue().encode(errors="replace"))
                if command == "ADD" and code == 0 and not answered:
                    LOG.info("call %d: the caller left before the ADD's answer: rolling it back", self.number)
                    self._undo(module, env, stdin)
            return True
        except Abandoned as e:       # while waiting for the attachment's lock: nothing was done
            LOG.info("call %d: %s %s abandoned before it started: %s", self.number, _name(module), command, e)
            self._reply(*_try_again(stdin, f"the call was abandoned before it started: {e}"))
            self._report_outcome(module, command, TRY_AGAIN_LATER, started)
            return False

    def _abandoned(self, module: str, env: dict, stdin: bytes, reason: str, started: float):
        command = env.get("CNI_COMMAND", "")
        if command == "ADD":
            self._undo(module, env, stdin)
            what = "rolled back"
        else:
            what = "stopped"
        LOG.info("call %d: %s %s container=%s ifname=%s %s after %.3fs: %s", self.number, _name(module), command,
                 env.get("CNI_CONTAINERID", "-"), env.get("CNI_IFNAME", "-"), what, time.monotonic() - started, reason)
        self._reply(*_try_again(stdin, f"the node daemon {what} the call: {reason}"))
        self._report_outcome(module, command, TRY_AGAIN_LATER, started)

    def _report_outcome(self, module: str, command: str, code: int, started: float):
        if self.channel is None:
            return
        command = command if command in _COMMANDS else "other"    # labels stay few, whatever a caller sends
        outcome = [_name(module) if module in NAMES else "unknown", command, code, time.monotonic() - started]
        with contextlib.suppress(OSError):
            self.channel.send(b"outcome " + json.dumps(outcome).encode())

    def _undo(self, module: str, env: dict, stdin: bytes):
        """DEL of what an abandoned ADD may have made (DEL is idempotent), killed if it hangs."""
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, UNDO_TIMEOUT)
        with request_logs(env):
            stdout, code = serve(self.plugins, module, dict(env, CNI_COMMAND="DEL"), stdin)
        signal.setitimer(signal.ITIMER_REAL, 0)
        if code:
            LOG.warning("call %d: the DEL rolling back an abandoned ADD failed: %s", self.number,
                        stdout.decode(errors="replace").strip())

    def _log(self, module: str, env: dict, code: int, started: float):
        LOG.info("call %d: %s %s container=%s ifname=%s -> exit %d in %.4fs (process %d)", self.number,
                 _name(module), env.get("CNI_COMMAND", "?"), env.get("CNI_CONTAINERID", "-"),
                 env.get("CNI_IFNAME", "-"), code, time.monotonic() - started, os.getpid())

    def _reply(self, stdout: bytes, code: int, stderr: bytes = b"") -> bool:
        """Answer the caller; whether it got the answer."""
        try:
            self.conn.settimeout(WRITE_TIMEOUT)
            client.send_message(self.conn, [str(code).encode(), stdout, stderr])
            return True
        except OSError as e:
            LOG.info("call %d: the caller left before the answer (%s)", self.number, e)
            return False


def call_budget(caller_timeout: float) -> float:
    """A call's time in the daemon: short enough that its rollback and answer reach the caller before
    the caller gives up."""
    return max(caller_timeout / 2, caller_timeout - 10)


def _cni_code(stdout: bytes, exit_code: int) -> int:
    """0 on success, else the error object's code (100, internal error, when there is none)."""
    if exit_code == 0:
        return 0
    try:
        code = json.loads(stdout).get("code")
    except (ValueError, AttributeError):
        code = None
    return code if isinstance(code, int) and not isinstance(code, bool) else INTERNAL


def _name(module: str) -> str:
    return NAMES.get(module, repr(module))


def _try_again(stdin: bytes, details: str) -> tuple[bytes, int]:
    return client.error_reply(stdin, TRY_AGAIN_LATER, "the podplumb node daemon did not complete the call; "
                              "try again later", details)


class Guard:
    """Interrupts the call's process (raises Abandoned in it) when the call runs out of time (SIGALRM),
    the daemon dies (SIGUSR2, the parent-death signal) or, with `interrupt_on_hangup`, the caller
    hangs up (SIGIO: the connection is O_ASYNC). No thread: the call process stays single-threaded."""

    def __init__(self, conn: socket.socket, budget: float, interrupt_on_hangup: bool):
        self.conn = conn
        self.budget = budget
        self.interrupt_on_hangup = interrupt_on_hangup
        self.armed = False
        self.gone = False

    def __enter__(self):
        for signum in _INTERRUPTS:
            signal.signal(signum, self._interrupt)
        fd = self.conn.fileno()
        fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, self.budget)
        if self.hung_up():         # before O_ASYNC was set
            try:
                self._interrupt(signal.SIGIO, None)
            except Abandoned:
                self.disarm()
                raise
        return self

    def __exit__(self, *exc):
        self.disarm()
        with contextlib.suppress(OSError):
            fd = self.conn.fileno()
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_ASYNC)
        signal.signal(signal.SIGIO, signal.SIG_IGN)     # the caller hanging up now is no news
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)   # a call process waiting for its next call dies with the daemon
        return False

    def disarm(self):
        self.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)

    def hung_up(self) -> bool:
        poller = select.poll()
        poller.register(self.conn.fileno(), select.POLLRDHUP)
        return any(events & (select.POLLRDHUP | select.POLLHUP) for _, events in poller.poll(0))

    def check(self):
        """Raise Abandoned if the caller of an ADD hung up after it was too late to interrupt."""
        if self.interrupt_on_hangup and (self.gone or self.hung_up()):
            self.armed = False
            raise Abandoned(_INTERRUPTS[signal.SIGIO])

    def _interrupt(self, signum, frame):
        if signum == signal.SIGIO:
            if not self.hung_up():       # readable or writable again: not a hang-up
                return
            self.gone = True
            if not self.interrupt_on_hangup:
                return
        if self.armed:
            self.armed = False
            raise Abandoned(_INTERRUPTS[signum] if signum != signal.SIGALRM
                            else f"it ran out of time ({self.budget:.1f}s)")


def attachment(env: dict, stdin: bytes) -> str | None:
    """The (network, container ID, ifname) a call acts on, or None when it names none."""
    if env.get("CNI_COMMAND") not in _LOCKED_COMMANDS or len(stdin) > client.MAX_CONFIG_BYTES:
        return None
    try:
        name = json.loads(stdin).get("name")
    except (ValueError, AttributeError, RecursionError):
        return None
    if not isinstance(name, str):
        return None
    return f"{name}\0{env.get('CNI_CONTAINERID', '')}\0{env.get('CNI_IFNAME', '')}"


@contextlib.contextmanager
def kernel_teardowns_after_answer():
    """Links the call deletes are gone when it answers; the kernel's wait that follows a deletion
    (an RCU grace period) ends after the answer, still under the attachment's lock."""
    netlink.teardown_in_background()
    try:
        yield
    finally:
        netlink.finish_teardowns()


@contextlib.contextmanager
def attachment_lock(locks: int, key: str | None):
    """One call at a time per attachment: a POSIX lock on one byte of a file shared by every call
    process, at an offset derived from the key (released by the kernel if the process dies)."""
    if key is None:
        yield
        return
    offset = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 2
    fcntl.lockf(locks, fcntl.LOCK_EX, 1, offset)
    try:
        yield
    finally:
        fcntl.lockf(locks, fcntl.LOCK_UN, 1, offset)


def receive_request(conn: socket.socket, deadline: float) -> tuple[list[bytes], list[int]]:
    """The request's fields, and the file descriptors that came with it (caller's namespaces)."""
    conn.settimeout(max(0.001, deadline - time.monotonic()))
    data, ancdata, flags, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(4 * len(client.CALLER_NAMESPACES)))
    fds = _received_fds(ancdata)
    try:
        if flags & socket.MSG_CTRUNC:
            raise client.FrameError("more file descriptors than the caller's namespaces")
        if not data:
            raise client.FrameError("connection closed")
        while len(data) < 4:
            data += client._recv_exactly(conn, 4 - len(data), deadline)
        size = int.from_bytes(data[:4], "big")
        if size > client.MAX_REQUEST:
            raise RequestTooLarge(f"{size} bytes; at most {client.MAX_CONFIG_BYTES} bytes of network config "
                                  f"and {client.MAX_ENV_BYTES} bytes of environment")
        payload = data[4:]
        if len(payload) > size:
            raise client.FrameError("more bytes than the frame announced")
        payload += client._recv_exactly(conn, size - len(payload), deadline)
        return client.decode(payload), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def parse_request(fields: list) -> tuple[str, dict, bytes]:
    """[module or executable name, stdin, key1, value1, ...] -> (module, env, stdin). The native client
    sends its executable's name, the Python launcher its module."""
    if len(fields) < 2 or len(fields) % 2:
        raise ValueError(f"a request has module, stdin and key/value pairs; got {len(fields)} fields")
    names = [os.fsdecode(f) for f in fields[2:]]
    module = fields[0].decode(errors="replace")
    return PLUGINS.get(module, module), dict(zip(names[::2], names[1::2])), fields[1]


def serve(plugins: dict, module: str, env: dict, stdin: bytes) -> tuple[bytes, int]:
    """One CNI call, exactly as the standalone executable would answer it."""
    if module not in NAMES:
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
        handler.setFormatter(logging.Formatter(log.FORMAT))
        handler.addFilter(lambda record: record.thread == ident)
        root.addHandler(handler)
    try:
        yield captured
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
