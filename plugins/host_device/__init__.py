"""host-device: a node link moved into the pod and back (config.py, plugin.py)."""
