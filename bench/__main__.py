"""`python -m bench [--only cni|csi|portmap ...] [options]`: every benchmark present, one after another.

Each bench module has `main(argv) -> int` and ignores options it does not know, so one command line
serves them all (`--quick` shrinks every bench for a CI smoke run).
"""

import importlib
import importlib.util
import sys
import traceback

BENCHES = ("cni", "csi", "portmap", "vxlan", "scale")     # bench/<name>_bench.py


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = set()
    while "--only" in argv:
        at = argv.index("--only")
        only.add(argv[at + 1] if at + 1 < len(argv) else "")
        del argv[at:at + 2]
    failed = []
    for name in BENCHES:
        module_name = f"bench.{name}_bench"
        if (only and name not in only) or importlib.util.find_spec(module_name) is None:
            continue
        print(f"\n=== {name} ===", flush=True)
        try:
            code = importlib.import_module(module_name).main(argv)
        except Exception:
            traceback.print_exc()
            code = 1
        if code:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
