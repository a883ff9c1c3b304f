"""The host-device plugin (being written)."""
