"""What an installed plugin executable runs. Every pod event pays this start-up, so it runs under
`python -I -S` (no site: no .pth files) and imports only the standard library and our own small
modules until it knows the plugin must run in this process."""

import os
import sys


def run(module: str, daemon_socket: str | None = None, site_dir: str | None = None):
    """The executable's whole life: main, then an exit that skips the interpreter's teardown (tens
    of milliseconds spent freeing what the kernel frees at exit anyway)."""
    import cni
    cni.EXITS_AFTER_ANSWER = True
    code = main(module, daemon_socket, site_dir)
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()      # log files flushed and closed
    sys.stdout.flush()
    sys.stderr.flush()
    for hook in cni.BEFORE_EXIT:
        hook()
    os._exit(code)


def main(module: str, daemon_socket: str | None = None, site_dir: str | None = None) -> int:
    stdin = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    env = dict(os.environ)
    output, code = _serve(module, env, stdin, daemon_socket, site_dir)
    sys.stdout.buffer.write(output)
    sys.stdout.flush()
    return code


def _serve(module: str, env: dict, stdin: bytes, daemon_socket: str | None,
           site_dir: str | None) -> tuple[bytes, int]:
    if env.get("CNI_COMMAND") == "VERSION":   # the same answer for every plugin of ours: no need to ask
        from cni.version import version_reply
        return version_reply(stdin), 0
    if daemon_socket and os.path.exists(daemon_socket):
        from podplumb import client
        answer = client.forward(daemon_socket, module, env, stdin)
        if answer is not None:
            return answer
    if daemon_socket:   # the dhcp plugin asks the lease service of the daemon this executable was installed for
        from podplumb.client import DHCP_SOCKET_ENV, dhcp_socket
        env.setdefault(DHCP_SOCKET_ENV, dhcp_socket(daemon_socket))
    if site_dir:   # third-party packages (pyroute2, for tc and dhcp) are there; its .pth files cost 25 ms, unneeded
        sys.path.append(site_dir)
    return run_in_process(module, env, stdin)


def run_in_process(module: str, env: dict, stdin: bytes) -> tuple[bytes, int]:
    from cni import skel
    return skel.run(skel.load_plugin(module), env, stdin)
