"""The `podplumb` command: one sub-command per job, each importing only what it needs."""

import argparse
import sys

from podplumb.client import DEFAULT_SOCKET


def _install(args):
    from podplumb.install import install
    for path in install(args.cni_bin_dir, daemon_socket=args.daemon_socket):
        print(path)
    return 0


def _leases(args):
    from podplumb.inspect import print_leases
    return print_leases(args.data_dir, args.network)


def _demo(args):
    from podplumb.demo import main
    return main()


def _csi(argv):
    from csi.server import main
    return main(argv)


def _daemon(argv):
    from podplumb.daemon import main
    return main(argv)


def _overlay(argv):
    from podplumb.overlay.__main__ import main
    return main(argv)


# Sub-commands that parse their own options: the rest of the command line goes to them as it is.
_OWN_OPTIONS = {
    "csi": (_csi, "run the CSI driver (see `podplumb csi --help`)"),
    "daemon": (_daemon, "run the warm CNI node daemon"),
    "overlay": (_overlay, "register this host's vxlan subnet in etcd and follow the others"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _OWN_OPTIONS:
        return _OWN_OPTIONS[argv[0]][0](argv[1:])

    parser = argparse.ArgumentParser(prog="podplumb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("install", help="write the CNI plugin executables into a CNI bin dir")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    p.add_argument("--daemon-socket", default=DEFAULT_SOCKET,
                   help="where the plugins look for a running node daemon")
    p.set_defaults(func=_install)

    for name, (_, help_text) in _OWN_OPTIONS.items():
        sub.add_parser(name, help=help_text, add_help=False)   # listed in --help; dispatched above

    p = sub.add_parser("leases", help="list host-local leases: network, address, container, interface")
    p.add_argument("--data-dir", default="/var/lib/cni/networks")
    p.add_argument("network", nargs="?", help="only this network")
    p.set_defaults(func=_leases)

    p = sub.add_parser("demo", help="wire two pods and a volume on this machine and show it")
    p.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
