"""The static IPAM plugin: fixed addresses, routes and DNS from the config, runtimeConfig or CNI_ARGS."""
