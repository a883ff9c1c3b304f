"""The `podplumb` command: one sub-command per job, each importing only what it needs."""

import argparse
import sys


def _install(args):
    from podplumb.install import install
    for path in install(args.cni_bin_dir, daemon_socket=args.daemon_socket):
        print(path)
    return 0


def _csi(args):
    from csi.server import main
    return main(args.rest)


def _overlay(args):
    from podplumb.overlay.__main__ import main
    return main(args.rest)


def _leases(args):
    from podplumb.inspect import print_leases
    return print_leases(args.data_dir, args.network)


def _demo(args):
    from podplumb.demo import main
    return main()


def _daemon(args):
    from podplumb.daemon import main
    return main(args.rest)


_OWN_OPTIONS = ("csi", "daemon", "overlay")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="podplumb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("install", help="write the CNI plugin executables into a CNI bin dir")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    p.add_argument("--daemon-socket", default="/run/podplumb/cni.sock",
                   help="where the plugins look for a running node daemon")
    p.set_defaults(func=_install)

    p = sub.add_parser("csi", help="run the CSI driver (see `podplumb csi --help`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_csi)

    p = sub.add_parser("daemon", help="run the warm CNI node daemon", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_daemon)

    p = sub.add_parser("overlay", help="register this host's vxlan subnet in etcd and follow the others",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_overlay)

    p = sub.add_parser("leases", help="list host-local leases: network, address, container, interface")
    p.add_argument("--data-dir", default="/var/lib/cni/networks")
    p.add_argument("network", nargs="?", help="only this network")
    p.set_defaults(func=_leases)

    p = sub.add_parser("demo", help="wire two pods and a volume on this machine and show it")
    p.set_defaults(func=_demo)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _OWN_OPTIONS:
        # These parse their own options: argparse's REMAINDER rejects a leading "--option".
        return parser.parse_args(argv[:1]).func(argparse.Namespace(rest=argv[1:]))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
