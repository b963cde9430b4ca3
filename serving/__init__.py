"""HTTP ingress, Ray Serve deployments, protocol models, configuration."""
