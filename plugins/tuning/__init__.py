"""tuning: sysctls of the pod's network namespace and settings of its interface, chained after a
main plugin. DEL puts back the interface's original values."""
