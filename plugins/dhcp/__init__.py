"""dhcp IPAM: leases from a DHCP server, kept by the node daemon (plugin.py forwards, service.py and lease.py keep them)."""
