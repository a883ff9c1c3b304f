"""The firewall plugin (being written)."""
