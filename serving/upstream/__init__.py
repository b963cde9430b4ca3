"""Models served by a remote OpenAI-compatible server: the ingress calls it directly (no Ray replica)."""
