"""podplumb's CNI library: the dispatcher, netlink and nftables layers, and what the plugins share."""

# True in an installed plugin executable (podplumb.launcher.run), which exits right after its answer:
# what the kernel still does after a link is deleted may then outlive the plugin (cni.netlink).
EXITS_AFTER_ANSWER = False

# Run by a plugin executable right before it exits (after its answer is written), in order.
BEFORE_EXIT = []
