"""What every model deployment does on start: set torch's threads, resolve the source, build the backend."""
from __future__ import annotations

import logging
import os
import time

from models.factory import build_backend
from models.sources import resolve_source
from serving.config import ModelConfig

log = logging.getLogger("serving.deployments")


def load_backend(spec: dict, data_dir: str):
    """Build the backend for a model spec (a ModelConfig dump); logs how long it took."""
    model = ModelConfig.model_validate(spec)
    # Ray sets OMP_NUM_THREADS to the actor's num_cpus (often < 1 core here): torch would run on one thread.
    import torch

    torch.set_num_threads(model.torch_threads or os.cpu_count() or 1)
    start = time.perf_counter()
    backend = build_backend(
        model.task, resolve_source(model.source), model.dtype, model.device, os.path.join(data_dir, "cache"), model.options
    )
    log.info("model %s (%s) loaded from %s in %.1f s", model.name, model.task, model.source, time.perf_counter() - start)
    return model, backend


def configure_batching(batch_method, model: ModelConfig) -> None:
    """Apply the model's batching limits to a @serve.batch method of this replica."""
    batch_method.set_max_batch_size(model.batching.max_batch_size)
    batch_method.set_batch_wait_timeout_s(model.batching.batch_wait_timeout_s)
