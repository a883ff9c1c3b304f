"""The loopback plugin (being written)."""
