"""API keys: hashed records in the registry database, an in-memory key ring in the ingress, per-key limits."""
