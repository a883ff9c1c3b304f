"""podplumb's CNI library: the dispatcher, netlink and nftables layers, and what the plugins share."""

# True in an installed plugin executable (podplumb.launcher.run), which exits right after its answer:
# what the kernel still does after a link is deleted may then outlive the plugin (cni.netlink).
EXITS_AFTER_ANSWER = False

# Run by a plugin executable right before it exits (after its answer is written), in order.
BEFORE_EXIT = []


def run_detached(work, keep_sockets: bool = False) -> int:
    """Fork a child that runs `work()` and exits with what it returns (1 if it raises); the child's pid.

    For what a plugin executable leaves to outlive it: the child's stdin, stdout and stderr are
    /dev/null (the runtime waits for the plugin's to close) and no other descriptor of the plugin stays
    open in it (no lock outlives the plugin there), sockets aside with `keep_sockets`."""
    import os
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
            try:
                if fd > 2 and not (keep_sockets and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")):
                    os.close(fd)
            except OSError:
                pass          # the listing's own descriptor, closed already
        code = work()
    finally:
        os._exit(code)
