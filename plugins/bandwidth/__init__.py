"""The bandwidth plugin (being written)."""
