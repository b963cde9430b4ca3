"""ServeOps over the real Ray Serve API, and the one place a ModelConfig becomes a Serve application.

Verified on Ray 2.60: `serve.run_many` / `serve.delete` / `serve.status` work from inside a replica (the
controller is one), in a worker thread so the replica's event loop keeps serving.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from ray import serve
from ray.serve import Application, Deployment
from ray.serve.api import RunTarget

from models.factory import chat_engine_config, wants_gpu
from models.sources import resolve_source
from serving.config import ModelConfig
from serving.deployments.chat import ChatDeployment
from serving.deployments.cluster import model_states, node_resources, value
from serving.deployments.embedding import EmbeddingDeployment
from serving.deployments.image import ImageDeployment
from serving.deployments.speech import SpeechDeployment
from serving.registry.checks import NodeResources
from serving.registry.controller import AppState

DEPLOYMENTS = {
    "chat": ChatDeployment,
    "embedding": EmbeddingDeployment,
    "image": ImageDeployment,
    "speech": SpeechDeployment,
}


# What a replica holds at once when the configuration does not say (Serve's own default is 5).
DEFAULT_MAX_ONGOING_REQUESTS = 64


def max_ongoing_requests(model: ModelConfig) -> int:
    """Requests one replica holds at once. A chat model's default is its engine's own bound (max_running +
    max_queued): Serve hands the replica exactly what the engine accepts and holds the rest at the ingress, so
    the engine's queue, then Serve's, fill before a 429; a request of n > 1 choices may still meet the engine's
    own 429 first (it takes n sequences)."""
    if model.max_ongoing_requests is not None:
        return model.max_ongoing_requests
    if model.task == "chat":
        engine = chat_engine_config(resolve_source(model.source), model.options)  # the engine's own defaults
        on = "cuda" if wants_gpu(model.device, model.resources.num_gpus) else "cpu"  # 256 running on CUDA, 16 on CPU
        return engine.running_on(on) + engine.max_queued
    return DEFAULT_MAX_ONGOING_REQUESTS


def max_queued_requests(model: ModelConfig) -> int:
    """Requests that may wait at the ingress for a replica (beyond them: 429). Default: as many as the replicas
    hold at once (at their largest number when autoscaling, and at least one replica's worth)."""
    if model.max_queued_requests is not None:
        return model.max_queued_requests
    replicas = model.autoscaling.max_replicas if model.autoscaling else model.num_replicas
    return max_ongoing_requests(model) * max(1, replicas)


def scaling_options(model: ModelConfig) -> dict:
    """The deployment's replica count or Serve autoscaling_config (our cold-start bound is the ingress' own)."""
    if model.autoscaling is None:
        return {"num_replicas": model.num_replicas}
    return {"autoscaling_config": model.autoscaling.model_dump(exclude={"cold_start_timeout_s"})}


def actor_options(model: ModelConfig) -> dict:
    """Ray resources per replica: Ray places the replica on a node that has them and gives it its GPU share."""
    options = {"num_cpus": model.resources.num_cpus, "num_gpus": model.resources.num_gpus}
    if model.resources.custom:
        options["resources"] = dict(model.resources.custom)
    return options


def deployment_options(model: ModelConfig) -> dict:
    """Everything Serve is told about the model's deployment (also written by `openserve serve-config`)."""
    return {
        "name": model.deployment_name,
        "max_ongoing_requests": max_ongoing_requests(model),
        "max_queued_requests": max_queued_requests(model),  # counted per caller: the one ingress replica
        "ray_actor_options": actor_options(model),
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": 30,  # undeploy and Ctrl-C let in-flight requests finish first
        **scaling_options(model),
    }


def model_application(model: ModelConfig, data_dir: str, report_to: str | None = None) -> Application:
    """The model's own application: one deployment of its task's class (no HTTP route: the ingress calls it).
    `report_to`: the app whose registry controller hears where each replica runs (None: nobody)."""
    deployment = DEPLOYMENTS[model.task].options(**deployment_options(model))
    return deployment.bind(model.deployment_spec(), data_dir, report_to)


class SharedLookup:
    """fetch()'s result, fetched again only when older than `max_age_s`; callers from several threads at once share
    one fetch (the others wait for it). clear() makes the next get() fetch."""

    def __init__(self, fetch: Callable[[], object], max_age_s: float):
        self._fetch, self._max_age_s = fetch, max_age_s
        self._lock = threading.Lock()
        self._value, self._at = None, float("-inf")

    def get(self):
        with self._lock:
            if time.monotonic() - self._at > self._max_age_s:
                self._value, self._at = self._fetch(), time.monotonic()
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._at = float("-inf")


# serve.status() costs Serve's controller a full ServeInstanceDetails each call; the registry controller watches
# every deploying model at once (each every poll_s), so they share one look this young.
STATUS_MAX_AGE_S = 0.4


class RayServeOps:
    def __init__(self, data_dir: str, report_to: str | None = None):
        self.data_dir = data_dir
        self.report_to = report_to
        self._status = SharedLookup(serve.status, STATUS_MAX_AGE_S)

    def run(self, spec: ModelConfig) -> None:
        app = model_application(spec, self.data_dir, self.report_to)
        serve.run_many([RunTarget(target=app, name=spec.deployment_name, route_prefix=None)],
                       wait_for_applications_running=False)
        self._status.clear()  # the next look sees the new application

    def delete(self, app: str) -> None:
        serve.delete(app, _blocking=True)
        self._status.clear()

    def state(self, app: str) -> AppState | None:
        status = self._status.get().applications.get(app)
        if status is None:
            return None
        messages = [status.message] + [d.message for d in status.deployments.values()]
        return AppState(
            status=value(status.status),
            message="\n".join(m for m in messages if m),
            # Ray's own words (deployment_state.py) for replicas still waiting for resources after 30 s.
            unschedulable=any("to be scheduled" in (d.message or "") for d in status.deployments.values()),
        )

    def states(self) -> dict[str, AppState]:
        return model_states()

    def nodes(self) -> list[NodeResources]:
        return node_resources()
