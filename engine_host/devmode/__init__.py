"""Local development only: the demo dataset, its tenants and policies, and the local control API server."""
