"""The CSI driver's Prometheus metrics: one count and one duration per RPC (reported by the
server's interceptor), and gauges of what the driver's state holds, read at each scrape."""

import contextlib
import sqlite3

import grpc
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

CSI_REQUESTS = Counter("podplumb_csi_requests_total", "CSI RPCs served, by method and gRPC status code name",
                       ["method", "code"])
CSI_DURATION = Histogram("podplumb_csi_request_duration_seconds", "Time the CSI driver took to answer an RPC",
                         ["method"], buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))


def record_rpc(method: str, code: grpc.StatusCode, seconds: float):
    """An observer of csi.server's interceptor: one RPC answered."""
    CSI_REQUESTS.labels(method, code.name).inc()
    CSI_DURATION.labels(method).observe(seconds)


class StateCollector:
    """podplumb_csi_volumes{kind}, podplumb_csi_snapshots, podplumb_csi_staged_volumes,
    podplumb_csi_publications and podplumb_csi_ephemeral_volumes from the state database (read-only)."""

    def __init__(self, db_path: str):
        self.db_path = str(db_path)

    def collect(self):
        volumes = GaugeMetricFamily("podplumb_csi_volumes", "Volumes the driver holds, by kind", labels=["kind"])
        counts = {name: GaugeMetricFamily(f"podplumb_csi_{name}", help_text) for name, help_text in (
            ("snapshots", "Snapshots the driver holds"), ("staged_volumes", "Volumes staged on this node"),
            ("publications", "Volume publications on this node"),
            ("ephemeral_volumes", "Ephemeral inline volumes on this node"))}
        tables = {"snapshots": "snapshots", "staged_volumes": "stages", "publications": "publications",
                  "ephemeral_volumes": "ephemerals"}
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)) as db:
                for kind, number in db.execute("SELECT kind, COUNT(*) FROM volumes GROUP BY kind"):
                    volumes.add_metric([kind], number)
                for name, table in tables.items():
                    counts[name].add_metric([], db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        except sqlite3.Error:
            return      # no state yet, or busy beyond the timeout: this scrape has no gauges
        yield volumes
        yield from counts.values()
