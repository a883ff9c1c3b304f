"""sbr: source-based routing for a pod interface, chained after a main plugin."""
