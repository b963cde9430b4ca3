"""What the engine process of a chat model runs to build its engine. Free of Ray on purpose: the engine process
imports this module (and what it imports) on every start and restart."""
from __future__ import annotations

from serving.deployments.common import load_backend


def build_engine(spec: dict, data_dir: str):
    """Runs in the engine process: nice 0 and OpenMP spinning, torch threads, the model, the engine (load_backend)."""
    return load_backend(spec, data_dir)[1]
