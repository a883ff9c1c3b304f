"""The sbr plugin (being written)."""
