"""Transport-free services that sit between a deployment and a models/ backend."""
