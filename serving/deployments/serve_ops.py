"""ServeOps over the real Ray Serve API, and the one place a ModelConfig becomes a Serve application.

Verified on Ray 2.60: `serve.run_many` / `serve.delete` / `serve.status` work from inside a replica (the
controller is one), in a worker thread so the replica's event loop keeps serving.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ray import serve
from ray.serve import Application, Deployment
from ray.serve.api import RunTarget

from models.factory import chat_engine_config, wants_gpu
from models.sources import resolve_source
from serving.config import ModelConfig, group_app_name
from serving.deployments.chat import ChatDeployment
from serving.deployments.cluster import model_states, node_resources, value
from serving.deployments.embedding import EmbeddingDeployment
from serving.deployments.host import ModelHost, member_config, spec_key
from serving.deployments.image import ImageDeployment
from serving.deployments.speech import SpeechDeployment
from serving.registry.checks import NodeResources
from serving.registry.controller import AppState, MemberState

log = logging.getLogger("ray.serve.openserve")

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


# A group's deployment keeps one code version across membership changes: Serve gives an imperatively deployed
# deployment a random one each time, which restarts its replica; with the same one a new user_config is a
# lightweight update (reconfigure() on the live replica). A change of ray_actor_options still restarts it.
GROUP_CODE_VERSION = "openserve-model-host-1"


def group_actor_options(members: list[ModelConfig]) -> dict:
    """Ray resources of a group's replica: the element-wise largest of its members' (they share one process), so
    that a member joining with no larger need leaves them, and the replica, as they are."""
    options: dict = {"num_cpus": 0.0, "num_gpus": 0.0}
    for member in members:
        for key, amount in actor_options(member).items():
            if key == "resources":
                merged = options.setdefault("resources", {})
                for name, need in amount.items():
                    merged[name] = max(merged.get(name, 0), need)
            else:
                options[key] = max(options[key], amount)
    return options


def group_options(group: str, members: list[ModelConfig]) -> dict:
    """Everything Serve is told about a colocation group's deployment (also written by `openserve serve-config`).
    Bounds add up over the members (one process answers for all; both are updated without a restart)."""
    return {
        "name": group_app_name(group),
        "max_ongoing_requests": sum(max_ongoing_requests(m) for m in members),
        "max_queued_requests": sum(max_queued_requests(m) for m in members),
        "ray_actor_options": group_actor_options(members),
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": 30,
        "num_replicas": 1,
        "user_config": member_config(members),
    }


def group_application(group: str, members: list[ModelConfig], data_dir: str,
                      report_to: str | None = None) -> Application:
    """A colocation group's application: one ModelHost deployment whose replica serves `members`."""
    deployment = ModelHost.options(**group_options(group, members))
    deployment = deployment.options(version=GROUP_CODE_VERSION, _internal=True)  # see GROUP_CODE_VERSION
    return deployment.bind(group, data_dir, report_to)


# How long the registry controller waits for a group's replica to say how it holds its members.
MEMBER_STATE_TIMEOUT_S = 5.0


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
        self._hosts: dict = {}  # group application -> its handle (one router each, made once)

    def run(self, spec: ModelConfig) -> None:
        app = model_application(spec, self.data_dir, self.report_to)
        serve.run_many([RunTarget(target=app, name=spec.deployment_name, route_prefix=None)],
                       wait_for_applications_running=False)
        self._status.clear()  # the next look sees the new application

    def run_group(self, group: str, members: list[ModelConfig]) -> None:
        app = group_application(group, members, self.data_dir, self.report_to)
        serve.run_many([RunTarget(target=app, name=group_app_name(group), route_prefix=None)],
                       wait_for_applications_running=False)
        self._status.clear()

    def member_state(self, app: str, spec: ModelConfig) -> MemberState | None:
        """Asked of the group's replica (bounded); "loading" while it holds another spec of the model or none."""
        if self.state(app) is None:
            return None
        try:
            handle = self._hosts.get(app) or self._hosts.setdefault(app, serve.get_app_handle(app))
            members = handle.member_states.remote().result(timeout_s=MEMBER_STATE_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - no replica (yet), or it is not answering: not there
            log.debug("member states of %s not read: %r", app, e)
            return None
        held = members.get(spec.name)
        if held is None or held["key"] != spec_key(spec.deployment_spec()):
            return MemberState("loading")
        return MemberState(held["status"], held["error"])

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
