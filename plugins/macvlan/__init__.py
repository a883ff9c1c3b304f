"""The macvlan plugin (being written)."""
