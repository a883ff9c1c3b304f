"""firewall: nftables rules that let a pod's traffic through the host's forward path, and keep
bridge networks apart (`ingressPolicy: same-bridge`), chained after a main plugin."""
