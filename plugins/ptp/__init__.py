"""The ptp plugin: a veth pair per pod, routed (not bridged) by the host."""
