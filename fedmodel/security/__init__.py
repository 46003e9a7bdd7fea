"""TLS certificates and SuperNode authentication keys for a deployed federation."""
