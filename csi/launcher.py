"""Run the driver as a child process and talk to it: for the demo and the tests."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc

from csi import mounts
from csi.v1 import csi_pb2, csi_pb2_grpc


class DriverProcess:
    """`python -m csi.server` on a socket, with stubs for its three services."""

    def __init__(self, state_dir, socket_path, node_id="node-1", args=(), stderr=None,
                 cwd=None, start_new_session=False, kubelet_dir=None):
        self.state_dir = state_dir
        self.kubelet_dir = kubelet_dir  # None: the driver's default
        self.socket_path = socket_path
        self.node_id = node_id
        self.args = list(args)
        self.stderr = stderr          # a file object, or None to inherit
        self.cwd = cwd                # None: ours
        self.start_new_session = start_new_session   # True: out of reach of our terminal's ^C
        self.process = None
        self.channel = None

    def start(self, timeout=20):
        argv = [sys.executable, "-m", "csi.server", "--endpoint", "unix://" + self.socket_path,
                "--node-id", self.node_id, "--state-dir", self.state_dir, *self.args]
        if self.kubelet_dir:
            argv += ["--kubelet-dir", self.kubelet_dir]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=self.stderr, cwd=self.cwd,
                                        start_new_session=self.start_new_session)
        self.channel = grpc.insecure_channel("unix://" + self.socket_path)
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"driver exited with {self.process.returncode}")
            try:
                if os.path.exists(self.socket_path) and \
                        self.identity.Probe(csi_pb2.ProbeRequest(), timeout=2).ready.value:
                    return self
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError("driver did not become ready")
            time.sleep(0.05)

    def _close_channel(self):
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def stop(self, timeout=20):
        """SIGTERM and wait; returns the exit code."""
        self._close_channel()
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self):
        """SIGKILL, as a crash would."""
        self._close_channel()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return self.process.returncode if self.process else 0


@contextlib.contextmanager
def temporary_driver(prefix="podplumb-csi-", args=(), stderr=None):
    """A driver on a fresh temp dir; on exit, stop it and leave nothing behind:
    no mount, no loop device, no file - even when the body failed."""
    root = tempfile.mkdtemp(prefix=prefix)
    driver = DriverProcess(os.path.join(root, "state"), os.path.join(root, "csi.sock"),
                           args=args, stderr=stderr, kubelet_dir=root)
    driver.root = root
    try:
        # A shared mount of its own: namespaces other processes unshare meanwhile
        # then see our unmounts and do not keep the loop devices busy.
        mounts.run("mount", "--bind", root, root)
        mounts.run("mount", "--make-shared", root)
        driver.start()
        yield driver
    finally:
        try:
            driver.stop()
        finally:
            mounts.release_under(root)
            shutil.rmtree(root, ignore_errors=True)
