"""macvlan: the pod gets its own MAC address on a link of the node (config.py, plugin.py)."""
