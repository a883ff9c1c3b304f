"""`podplumb overlay` (or `python -m podplumb.overlay`): run the overlay registry of one network on
this host until SIGTERM."""

import argparse
import logging
import signal
import sys
import threading

from cni import log
from cni.errors import CNIError
from podplumb.overlay import settings as overlay_settings
from podplumb.overlay.etcd import EtcdError
from podplumb.overlay.registry import Registry
from podplumb.overlay.subnets import ClaimError


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="podplumb overlay", description=__doc__)
    parser.add_argument("--network-config", required=True, help="the network's conflist (or config) file")
    parser.add_argument("--etcd-endpoints", help="comma-separated http(s)://HOST:PORT (default: cluster.etcdEndpoints)")
    parser.add_argument("--node-name", help="this host's name in the registry (default: the hostname)")
    parser.add_argument("--subnet", help="this host's pod subnet, instead of claiming one from cluster.cidr")
    parser.add_argument("--underlay-ip", help="this host's underlay address (default: underlayIP, else the "
                                              "address of the default route's link)")
    parser.add_argument("--ttl", type=int, help="seconds a silent host stays registered (default: cluster.ttl, 30)")
    parser.add_argument("--data-dir", help="where the claimed subnet is remembered (default: cluster.dataDir, "
                                           f"{overlay_settings.DEFAULT_DATA_DIR})")
    parser.add_argument("--netns", help="program this network namespace instead of our own")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), format=log.FORMAT)
    try:
        settings = overlay_settings.load(
            args.network_config, endpoints=args.etcd_endpoints.split(",") if args.etcd_endpoints else None,
            node=args.node_name, subnet=args.subnet, underlay_ip=args.underlay_ip, ttl=args.ttl,
            netns=args.netns, data_dir=args.data_dir)
        registry = Registry(settings)
        registry.start()
    except (CNIError, EtcdError, ClaimError) as e:
        logging.getLogger("podplumb").error("overlay registry cannot start: %s", e)
        return 1
    requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: requested.set())
    while not requested.wait(1.0):
        pass
    registry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
