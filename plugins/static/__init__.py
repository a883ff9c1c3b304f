"""The static plugin (being written)."""
