"""What an installed plugin executable runs. Standard library only until it must work in-process:
every pod event pays this start-up, so keep it small."""

import importlib
import os
import sys


def main(module: str, daemon_socket: str | None = None) -> int:
    stdin = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    env = dict(os.environ)
    output, code = _serve(module, env, stdin, daemon_socket)
    sys.stdout.buffer.write(output)
    sys.stdout.flush()
    return code


def _serve(module: str, env: dict, stdin: bytes, daemon_socket: str | None) -> tuple[bytes, int]:
    if daemon_socket and os.path.exists(daemon_socket):
        from podplumb import client
        answer = client.forward(daemon_socket, module, env, stdin)
        if answer is not None:
            return answer
    return run_in_process(module, env, stdin)


def run_in_process(module: str, env: dict, stdin: bytes) -> tuple[bytes, int]:
    name, _, attr = module.partition(":")
    plugin = getattr(importlib.import_module(name), attr or "PLUGIN")
    from cni import skel
    return skel.run(plugin, env, stdin)
