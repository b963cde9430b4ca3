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
from serving.deployments.merge import BatchMerger
from serving.deployments.observability import model_replica
from serving.metrics.models import watch_merger

log = logging.getLogger("serving.deployments")


def load_backend(spec: dict, data_dir: str):
    """Build the backend for a model spec (a ModelConfig dump) in this process, tuned for compute (see
    tune_for_compute); logs how long it took."""
    model = ModelConfig.model_validate(spec)
    tune_for_compute()
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


# Spin count for OpenMP threads waiting between parallel regions (libgomp's default: 300,000, then sleep).
SPIN_COUNT = "100000"


def tune_for_compute() -> None:
    """Make this process (a model replica or the LLM engine process) the one the cores serve first, and let its
    OpenMP threads spin briefly between parallel regions. Must run before torch is imported (libgomp reads its
    environment once, when it loads).

    Ray starts its workers at nice 15. Left there with passive OpenMP waits (each parallel region wakes a sleeping
    thread), small-op models lose much of their speed; with spinning waits at nice 15 they collapse when Ray's
    other workers want the same core. At nice 0 with a bounded spin, measured through the server on 2 cores
    (MiniLM, default batching; before -> after): 16 x 32 sentences 441 -> 567 sentences/s, 64 concurrent
    one-sentence requests 79 -> 167/s, one at a time 36 -> 45/s; SmolLM2 one stream 15.0 -> 21.0 tok/s and 16
    streams 156 -> 188. An operator's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins; without the right to lower the
    niceness the process stays where it is."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except PermissionError:
        log.info("model process stays at nice %d (no permission to lower it)", os.getpriority(os.PRIO_PROCESS, 0))


def batch_merger(batch_method, model: ModelConfig, run: Callable[[list], list]) -> BatchMerger:
    """The replica's BatchMerger for `run` (bad items failing alone), with the model's batching limits; its
    @serve.batch method forms batches at once, since the merger applies the wait (see merge.py)."""
    batch_method.set_max_batch_size(model.batching.max_batch_size)
    batch_method.set_batch_wait_timeout_s(0.0)
    merger = BatchMerger(lambda items: run_batch_isolated(run, items), model.batching.max_batch_size,
                         wait_s=model.batching.batch_wait_timeout_s)
    merger.on_pass = watch_merger(model.name, merger)  # metrics: requests per pass, requests waiting
    model_replica(model.name)
    return merger


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
    """The caller's side of run_batch_isolated: raise its own input error (the error map makes it a 400)."""
    if isinstance(result, ItemError):
        raise result.error
    return result
