"""Ray Serve deployments: one per model (by task) and the HTTP ingress."""
