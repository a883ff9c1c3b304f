"""The loopback plugin: the pod's `lo` up on ADD (127.0.0.1/8 and ::1), down on DEL."""
