"""bandwidth: tc shaping of a pod's traffic both ways, chained after a main plugin."""
