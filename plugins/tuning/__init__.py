"""The tuning plugin (being written)."""
