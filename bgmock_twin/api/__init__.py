"""The control HTTP API: FastAPI routes, thin over the daemon's components."""
