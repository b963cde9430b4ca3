"""The model registry: a SQL database of models (what to serve, how, and in what state) and the controller that
makes Ray Serve match it."""
