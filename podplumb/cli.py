"""The `podplumb` command: one sub-command per job, each importing only what it needs."""

import argparse
import os
import sys

from podplumb.client import DEFAULT_SOCKET


def _install(args):
    from podplumb import install, replaced
    backup_dir = args.backup_dir or replaced.default_backup_dir(args.cni_bin_dir)
    if args.restore:
        print(f"podplumb install --restore: into {args.cni_bin_dir}, from {backup_dir}")
        return replaced.restore(args.cni_bin_dir, backup_dir)
    states = replaced.survey(args.cni_bin_dir)
    foreign = [name for name, state in states.items() if state == "foreign"]
    kept = dict(zip(foreign, replaced.keep(args.cni_bin_dir, backup_dir, foreign)))
    install.install(args.cni_bin_dir, daemon_socket=args.daemon_socket)
    print(f"podplumb install: CNI plugins into {args.cni_bin_dir}")
    for name, state in states.items():
        said = {"new": "new", "ours": "updated (an earlier podplumb install)",
                "foreign": f"REPLACED; the previous {name} is kept as {kept.get(name)}"}[state]
        print(f"  {name:12} {said}")
    if kept:
        custom = f" --backup-dir {args.backup_dir}" if args.backup_dir else ""
        print(f"`podplumb install --restore --cni-bin-dir {args.cni_bin_dir}{custom}` puts the replaced ones back.")
    code_root = os.path.dirname(os.path.dirname(os.path.abspath(install.__file__)))
    print(f"The executables run {sys.executable} with the code in {code_root}: moving or deleting either\n"
          "breaks them; run `podplumb install` again after a move.")
    return 0


def _leases(args):
    from podplumb.inspect import print_leases
    return print_leases(args.data_dir, args.network)


def _gc(args):
    from podplumb.gc import collect
    return collect(args.state_dir, args.bin_dir, dry_run=args.dry_run, conf_dir=args.conf_dir)


def _status(args):
    from podplumb.status import show
    return show(args.state_dir, args.conf_dir, as_json=args.json)


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

    p = sub.add_parser("install", help="write the CNI plugin executables into a CNI bin dir",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Write podplumb's CNI plugins (bridge, host-local, portmap, ...) into a CNI "
                                   "bin dir. Same-named executables of somebody else (e.g. the reference Go "
                                   "plugins) are replaced; a copy of each is kept in the backup dir, and "
                                   "--restore puts them back. The executables run this virtualenv's Python "
                                   "with this checkout's code: install again after moving either.")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin", help="the CNI bin dir the runtime searches")
    p.add_argument("--daemon-socket", default=DEFAULT_SOCKET,
                   help="where the plugins look for a running node daemon (they work without one)")
    p.add_argument("--backup-dir", default=None,
                   help="where replaced executables are kept (default: CNI_BIN_DIR/.podplumb-replaced)")
    p.add_argument("--restore", action="store_true",
                   help="put the kept executables back, and remove podplumb's that replaced nothing")
    p.set_defaults(func=_install)

    for name, (_, help_text) in _OWN_OPTIONS.items():
        sub.add_parser(name, help=help_text, add_help=False)   # listed in --help; dispatched above

    p = sub.add_parser("leases", help="list host-local leases: network, address, container, interface",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="List the leases host-local keeps on disk (read-only).")
    p.add_argument("--data-dir", default="/var/lib/cni/networks", help="host-local's dataDir")
    p.add_argument("network", nargs="?", help="only this network (an error when it has no lease directory)")
    p.set_defaults(func=_leases)

    state_dir = os.environ.get("PODPLUMB_STATE_DIR") or "/var/lib/cni/podplumb"
    p = sub.add_parser("gc", help="remove attachments whose pod network namespace is gone",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Find attachments podplumb's plugins made (from the records their ADD "
                                   "writes) whose pod network namespace is gone, and remove them through "
                                   "each plugin's own DEL: leases, host links, nftables rules, host ports. "
                                   "A live pod is never touched. Prints what it removed.")
    p.add_argument("--conf-dir", default="/etc/cni/net.d",
                   help="the runtime's network configs: a stale attachment of a network no longer there is "
                        "named (and removed with the config recorded at its ADD)")
    p.add_argument("--bin-dir", default="/opt/cni/bin", help="the CNI bin dir whose executables run the DELs")
    p.add_argument("--state-dir", default=state_dir, help="the attachment records ($PODPLUMB_STATE_DIR)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.set_defaults(func=_gc)

    p = sub.add_parser("status", help="networks and attachments: container, ifname, addresses, host ports, "
                                      "live or stale", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--conf-dir", default="/etc/cni/net.d", help="the runtime's network configs")
    p.add_argument("--state-dir", default=state_dir, help="the attachment records ($PODPLUMB_STATE_DIR)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    p.set_defaults(func=_status)

    p = sub.add_parser("demo", help="wire two pods and a volume on this machine and show it",
                       description="As root: make throwaway namespaces playing a host and two pods, wire them "
                                   "with bridge + host-local, make a CSI volume, show it all, then remove "
                                   "everything. Touches none of this machine's interfaces, routes or firewall. "
                                   "No options.")
    p.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
