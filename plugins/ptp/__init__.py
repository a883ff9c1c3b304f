"""The ptp plugin (being written)."""
