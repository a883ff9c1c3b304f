"""The dhcp plugin (being written)."""
