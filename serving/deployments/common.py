"""What every model deployment does on start: set torch's threads, resolve the source, build the backend."""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

from models.errors import ModelInputError
from models.factory import build_backend
from models.sources import fetch_source
from serving.config import ModelConfig
from serving.deployments.merge import BatchMerger
from serving.deployments.observability import model_replica
from serving.errors import ModelExecutionError, ModelUnavailableError, ServingError
from serving.metrics.models import unwatch_merger, watch_merger

log = logging.getLogger("serving.deployments")


def load_backend(spec: dict, data_dir: str):
    """Build the backend for a model spec (a ModelConfig dump) in this process, tuned for compute (see
    tune_for_compute); logs how long it took."""
    model = ModelConfig.model_validate(spec)
    tune_for_compute()
    threads = model.torch_threads or len(os.sched_getaffinity(0)) or 1
    set_compute_threads(threads)
    start = time.perf_counter()
    source = fetch_source(model.source, model.revision, progress=log.info)  # Hub ids: into the HF cache first
    cache_dir = os.path.join(data_dir, "cache")
    backend = build_backend(model.task, source, model.dtype, model.device, cache_dir, model.options,
                            model.resources.num_gpus)
    set_compute_threads(threads)  # torch (if the backend loaded it) capped the environment's count at the cores
    log.info("model %s (%s) loaded from %s in %.1f s", model.name, model.task, model.source, time.perf_counter() - start)
    return model, backend


def set_compute_threads(threads: int) -> None:
    """Compute on `threads` threads (the cores this process may run on: cpuset/affinity aware, where os.cpu_count()
    counts the whole host). Ray sets OMP_NUM_THREADS to the actor's num_cpus (often < 1 core here): torch would run
    on one thread. The variable is what torch and libgomp read when they load, for every thread (the LLM engine's
    included), so a backend that never needs torch (Piper runs on onnxruntime) is spared its import and memory.
    Where torch is loaded already, its own setting is changed too."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


# Spin count for OpenMP threads waiting between parallel regions (libgomp's default: 300,000, then sleep).
SPIN_COUNT = "100000"


def tune_for_compute() -> None:
    """Make this process (a model replica or the LLM engine process) the one the cores serve first, and let its
    OpenMP threads spin briefly between parallel regions. Must run before torch is imported (libgomp reads its
    environment once, when it loads).

    Ray starts its workers at nice 15; there, with passive or spinning OpenMP waits alike, small-op models lost much
    of their speed (measurements: docs/batching.md). An operator's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins;
    without the right to lower the niceness the process stays where it is."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except PermissionError:
        log.info("model process stays at nice %d (no permission to lower it)", os.getpriority(os.PRIO_PROCESS, 0))


def batch_merger(model: ModelConfig, run: Callable[[list], list]) -> BatchMerger:
    """The replica's BatchMerger for `run` with the model's batching limits; an item that fails fails alone."""
    merger = BatchMerger(lambda items: run_batch_isolated(run, items, model.name), model.batching.max_batch_size,
                         wait_s=model.batching.batch_wait_timeout_s)
    merger.on_pass = watch_merger(model.name, merger)  # metrics: requests per pass, requests waiting
    model_replica(model.name)
    return merger


class ServedModel:
    """One model loaded in this process, as its own replica or as a member of a ModelHost (serving/deployments/
    host.py): its configuration, its backend, and the merger that batches its requests through `run`."""

    def __init__(self, model: ModelConfig, backend, run: Callable[[list], list]):
        self.model, self.backend = model, backend
        self.merger = batch_merger(model, run)

    def close(self) -> None:
        """Stop reporting this model's queue: it is dropped (its requests in flight still finish)."""
        unwatch_merger(self.model.name)


@dataclass
class ItemError:
    """A batch item's own failure, returned in its slot so that its batch-mates still get their results."""

    error: Exception  # a ModelInputError (the caller's input: 400) or a ServingError (500 / 503)


def run_batch_isolated(run: Callable[[list], list], items: list, model: str = "model") -> list:
    """run(items); if that raises, rerun item by item so that only the failing items fail. An item's
    ModelInputError is its own (400); any other exception becomes a typed 500 (503 when out of memory), logged once
    per pass for each distinct failure."""
    try:
        return run(items)
    except Exception as error:  # noqa: BLE001 - whatever one item does, its batch-mates still get answers
        if len(items) == 1:
            return [ItemError(_typed(error, model, set()))]
    logged: set[tuple[str, str]] = set()
    results = []
    for item in items:
        try:
            results.append(run([item])[0])
        except Exception as error:  # noqa: BLE001
            results.append(ItemError(_typed(error, model, logged)))
    return results


def _typed(error: Exception, model: str, logged: set[tuple[str, str]]) -> Exception:
    """The error a caller gets for its item: its own input error, else a typed 500/503 (logged, once per kind)."""
    if isinstance(error, (ModelInputError, ServingError)):
        return error
    key = (type(error).__name__, str(error))
    if key not in logged:
        logged.add(key)
        log.error("model %s failed on a request", model, exc_info=error)
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":  # torch's, without torch
        return ModelUnavailableError(f"The model `{model}` ran out of memory on this request; retry later.",
                                     code="model_out_of_memory")
    return ModelExecutionError(
        f"The model `{model}` failed on this request ({type(error).__name__}); the server log has the details.",
        code="model_error",
    )


def item_result(result):
    """The caller's side of run_batch_isolated: its own error raised (ModelInputError itself: the one error map in
    serving/api/errors.py makes it a 400), else its result."""
    if isinstance(result, ItemError):
        raise result.error
    return result
