"""The operators' dashboard: a server-rendered web UI over the shared read model (`python -m services.dashboard`)."""
