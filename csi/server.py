"""`python -m csi.server` / `podplumb csi`: serve Identity, Controller and Node on a unix socket."""

import argparse
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from cni import log as cni_log
from csi.controller import ControllerService
from csi.driver import DEFAULT_KUBELET_DIR, DEFAULT_NAME, Config, Driver
from csi.group_controller import GroupControllerService
from csi.identity import IdentityService
from csi.node import NodeService
from csi.reconcile import reconcile
from csi.v1 import csi_pb2_grpc

log = logging.getLogger("csi")

STOP_GRACE_SECONDS = 10
WORKERS = 16
# Request fields worth a log line: identifiers and paths, never secrets or contexts.
LOGGED_FIELDS = ("volume_id", "source_volume_id", "snapshot_id", "group_snapshot_id", "name",
                 "node_id", "staging_target_path", "target_path", "volume_path")
_SIZE_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text):
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = text[-1:] if text[-1:] in _SIZE_SUFFIX else ""
    try:
        value = int(text[: len(text) - len(suffix)]) * _SIZE_SUFFIX[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("size must not be negative")
    return value


def socket_path(endpoint):
    for prefix in ("unix://", "unix:"):
        if endpoint.startswith(prefix):
            path = endpoint[len(prefix):]
            if os.path.isabs(path):
                return os.path.normpath(path)
    raise ValueError(f"endpoint must be unix:///absolute/path, not {endpoint!r}")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="podplumb csi", description=__doc__)
    p.add_argument("--endpoint", default=os.environ.get("CSI_ENDPOINT"),
                   help="unix:///path/to/csi.sock (default: $CSI_ENDPOINT)")
    p.add_argument("--node-id", default=os.environ.get("NODE_ID") or socket.gethostname(),
                   help="this node's ID in CSI replies (default: $NODE_ID, else the hostname: %(default)s)")
    p.add_argument("--state-dir", default="/var/lib/podplumb/csi",
                   help="the SQLite state and the volumes' backing files (default: %(default)s)")
    p.add_argument("--capacity", type=parse_size, default=0,
                   help="bytes to provision in total (default: free space of the state dir)")
    p.add_argument("--name", default=DEFAULT_NAME, help="the driver name GetPluginInfo reports (default: %(default)s)")
    p.add_argument("--max-volumes", type=int, default=0, help="max_volumes_per_node (0: no limit)")
    p.add_argument("--glusterd-socket", default="",
                   help="glusterd's management socket, for the quotas of gluster volumes "
                        "(default: the gluster CLI's own, /var/run/glusterd.socket)")
    p.add_argument("--kubelet-dir", default=DEFAULT_KUBELET_DIR,
                   help="staging and target paths must lie under this directory "
                        f"(default: {DEFAULT_KUBELET_DIR})")
    p.add_argument("--enable-attach", action="store_true",
                   help="serve ControllerPublishVolume/ControllerUnpublishVolume (the CSIDriver "
                        "then needs attachRequired: true and an external-attacher)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="least severe level logged (default: %(default)s)")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text lines, or one JSON object a line (default: %(default)s)")
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: none)")
    args = p.parse_args(argv)
    if not args.endpoint:
        p.error("--endpoint or $CSI_ENDPOINT is required")
    try:
        args.socket = socket_path(args.endpoint)
    except ValueError as e:
        p.error(str(e))
    if args.max_volumes < 0:
        p.error("--max-volumes must not be negative")
    if not os.path.isabs(args.kubelet_dir) or os.path.realpath(args.kubelet_dir) == "/":
        p.error("--kubelet-dir must be an absolute path other than /")
    return args


class LoggingInterceptor(grpc.ServerInterceptor):
    """One stderr line per RPC: method, IDs, status code, duration; and each observer (metrics) told
    (method, status code, seconds)."""

    def __init__(self, observers=()):
        self.observers = tuple(observers)

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        def logged(request, context):
            start = time.monotonic()
            code = grpc.StatusCode.OK
            try:
                return inner(request, context)
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                ids = " ".join(f"{f}={getattr(request, f)}" for f in LOGGED_FIELDS
                               if f in request.DESCRIPTOR.fields_by_name and getattr(request, f))
                took = (time.monotonic() - start) * 1000
                for observe in self.observers:
                    observe(method, code, took / 1000)
                details = context.details() or b""
                if isinstance(details, bytes):
                    details = details.decode(errors="replace")
                extra = f" ({details})" if code != grpc.StatusCode.OK else ""
                log.info("%s %s -> %s%s in %.1f ms", method, ids, code.name, extra, took)

        return grpc.unary_unary_rpc_method_handler(
            logged, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


class EndpointTaken(Exception):
    """Another live process answers on the endpoint."""


def _answers(path):
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except socket.timeout:      # a full backlog: someone is there
        return True
    finally:
        probe.close()


def _prepare_socket(path):
    """Make way for our socket: a stale one (nobody listening) is replaced,
    a live one is another driver's and stays."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise EndpointTaken(f"{path} exists and is not a socket")
        if _answers(path):
            raise EndpointTaken(f"another process answers on {path}; not replacing its socket")
        os.unlink(path)


def serve(args):
    _prepare_socket(args.socket)      # first: a live driver's state and mounts are its own
    driver = Driver(Config(node_id=args.node_id, state_dir=args.state_dir, name=args.name,
                           capacity=args.capacity, max_volumes=args.max_volumes,
                           glusterd_socket=args.glusterd_socket,
                           kubelet_dir=args.kubelet_dir, enable_attach=args.enable_attach))
    reconcile(driver)
    observers = []
    metrics_server = None
    if args.metrics_address:
        from csi import metrics
        from podplumb.metrics import serve as serve_metrics
        metrics_server = serve_metrics(args.metrics_address, metrics.StateCollector(driver.layout.db))
        observers.append(metrics.record_rpc)
    server = grpc.server(ThreadPoolExecutor(max_workers=WORKERS), interceptors=[LoggingInterceptor(observers)])
    csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(driver), server)
    csi_pb2_grpc.add_ControllerServicer_to_server(ControllerService(driver), server)
    csi_pb2_grpc.add_NodeServicer_to_server(NodeService(driver), server)
    csi_pb2_grpc.add_GroupControllerServicer_to_server(GroupControllerService(driver), server)
    old_umask = os.umask(0o177)          # the socket is born 0600
    try:
        server.add_insecure_port("unix://" + args.socket)
        server.start()
    finally:
        os.umask(old_umask)
    os.chmod(args.socket, 0o600)
    log.info("serving %s as %s on node %s, state in %s", args.endpoint, args.name,
             args.node_id, args.state_dir)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    log.info("stopping")
    server.stop(STOP_GRACE_SECONDS).wait()
    if metrics_server:
        metrics_server.shutdown()
    if os.path.lexists(args.socket):
        os.unlink(args.socket)
    return 0


def main(argv=None):
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(cni_log.formatter(args.log_format) if args.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        return serve(args)
    except EndpointTaken as e:
        log.error("not starting: %s", e)
        return 1
    except Exception:
        log.exception("the CSI driver failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
