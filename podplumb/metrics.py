"""Prometheus metrics of the node daemon and the CSI driver, served over HTTP at /metrics
(`--metrics-address HOST:PORT`). The CNI counters are recorded in the daemon's main process from the
outcome each call process reports (podplumb.worker), so every call served is counted once."""

import ipaddress
import logging
import os

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

LOG = logging.getLogger("podplumb.metrics")

CNI_REQUESTS = Counter("podplumb_cni_requests_total", "CNI calls served by the node daemon, by outcome: "
                       "code 0 on success, else the CNI error code", ["plugin", "command", "code"])
CNI_DURATION = Histogram("podplumb_cni_request_duration_seconds", "Time the node daemon took to answer a CNI call",
                         ["plugin", "command"], buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT ([v6]:PORT, or :PORT for every address) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics-address {text!r}: expected HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not host.replace("-", "").replace(".", "").isalnum():
                raise ValueError(f"--metrics-address {text!r}: {host!r} is not a host") from None
    return host or "0.0.0.0", int(port)


def serve(address: str, *collectors):
    """Serve /metrics on `address` with these extra collectors; the server (its .shutdown() stops it)."""
    host, port = parse_address(address)
    for collector in collectors:
        REGISTRY.register(collector)
    server, _ = start_http_server(port, addr=host)
    LOG.info("metrics on http://%s:%d/metrics", *server.server_address[:2])
    return server


def record_cni_call(plugin: str, command: str, code: int, seconds: float):
    CNI_REQUESTS.labels(plugin, command, str(code)).inc()
    CNI_DURATION.labels(plugin, command).observe(seconds)


class LeaseCollector:
    """podplumb_cni_leases{network}: host-local lease files under a data dir, counted at each scrape."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir

    def collect(self):
        from plugins.host_local.config import Location
        from plugins.host_local.store import Store
        family = GaugeMetricFamily("podplumb_cni_leases", f"host-local leases held in {self.data_dir}",
                                   labels=["network"])
        try:
            networks = sorted(os.listdir(self.data_dir))
        except OSError:
            networks = []
        for network in networks:
            if os.path.isdir(os.path.join(self.data_dir, network)):
                family.add_metric([network], len(Store(Location(network, self.data_dir)).leases()))
        yield family


class AttachmentCollector:
    """podplumb_cni_attachments{network,state}: attachments recorded by the plugins (cni.records),
    live, stale (what `podplumb gc` would remove) or unknown."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir

    def collect(self):
        from podplumb import attachments
        family = GaugeMetricFamily("podplumb_cni_attachments", "Attachments made by podplumb's plugins, by state",
                                   labels=["network", "state"])
        counts = {}
        for attachment in attachments.load(self.state_dir):
            key = (attachment.network, attachment.state())
            counts[key] = counts.get(key, 0) + 1
        for (network, state), number in sorted(counts.items()):
            family.add_metric([network, state], number)
        yield family
