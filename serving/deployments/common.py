"""What every model deployment does on start: set torch's threads, resolve the source, build the backend."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from models.errors import ModelInputError
from models.factory import build_backend
from models.sources import fetch_source
from serving.config import ModelConfig
from serving.errors import InvalidRequestError

log = logging.getLogger("serving.deployments")


def load_backend(spec: dict, data_dir: str, passive_openmp: bool = True):
    """Build the backend for a model spec (a ModelConfig dump); logs how long it took. `passive_openmp=False` is for
    a process that sets its own OpenMP wait policy (the LLM engine process)."""
    model = ModelConfig.model_validate(spec)
    # OpenMP threads waiting for work spin by default. A replica shares its cores with Ray's proxy, the ingress and
    # the other replicas: a spinning thread holds the core its partner needs, and every parallel region waits a
    # scheduler time slice (MiniLM on 2 busy cores: 2 sentences/s spinning, 71 passive). Read once, when torch
    # loads libgomp, so it must be set before the import; an operator's own setting wins.
    if passive_openmp:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Ray sets OMP_NUM_THREADS to the actor's num_cpus (often < 1 core here): torch would run on one thread.
    import torch

    # The cores this process may run on (cpuset/affinity aware; os.cpu_count() counts the whole host). The setting
    # is process-wide: the LLM engine thread started after this uses it too.
    torch.set_num_threads(model.torch_threads or len(os.sched_getaffinity(0)) or 1)
    start = time.perf_counter()
    source = fetch_source(model.source, model.revision, progress=log.info)  # Hub ids: into the HF cache first
    cache_dir = os.path.join(data_dir, "cache")
    backend = build_backend(model.task, source, model.dtype, model.device, cache_dir, model.options)
    log.info("model %s (%s) loaded from %s in %.1f s", model.name, model.task, model.source, time.perf_counter() - start)
    return model, backend


def configure_batching(batch_method, model: ModelConfig) -> None:
    """Apply the model's batching limits to a @serve.batch method of this replica."""
    batch_method.set_max_batch_size(model.batching.max_batch_size)
    batch_method.set_batch_wait_timeout_s(model.batching.batch_wait_timeout_s)


@dataclass
class ItemError:
    """A batch item's own input error, returned in its slot so that its batch-mates still get their results."""

    error: ModelInputError


def run_batch_isolated(run: Callable[[list], list], items: list) -> list:
    """run(items); if the batch fails on one item's input, rerun item by item so only the bad items fail."""
    try:
        return run(items)
    except ModelInputError as e:
        if len(items) == 1:
            return [ItemError(e)]
    results = []
    for item in items:
        try:
            results.append(run([item])[0])
        except ModelInputError as e:
            results.append(ItemError(e))
    return results


def item_result(result):
    """The caller's side of run_batch_isolated: raise its own input error as a 400."""
    if isinstance(result, ItemError):
        raise InvalidRequestError(result.error.message, param=result.error.param)
    return result
