"""What GET /metrics answers: this process' live numbers + the hub's sum of the others + the models' state.

The models' state is read at scrape time from the registry (status) and from Serve's controller (target and
running replicas): neither is a call into a model replica, so a scrape never wakes or waits on a model.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from serving.metrics.definitions import REGISTRY
from serving.metrics.snapshot import Family, merge, render, snapshot

log = logging.getLogger("serving.metrics")

ModelState = Callable[[], list[Family]]  # blocking; run in a thread


class Scraper:
    def __init__(self, source: str | None = None, find_hub: Callable[[], Any] | None = None,
                 model_state: ModelState | None = None, registry: CollectorRegistry = REGISTRY,
                 timeout_s: float = 2.0):
        self.source = source  # this process' id at the hub: its pushed copy is replaced by the live numbers
        self.find_hub = find_hub
        self.model_state = model_state
        self.registry = registry
        self.timeout_s = timeout_s

    async def render(self) -> bytes:
        parts = [snapshot(self.registry)]
        if self.find_hub is not None:
            parts.append(await self._from_hub())
        if self.model_state is not None:
            try:
                parts.append(await asyncio.wait_for(asyncio.to_thread(self.model_state), self.timeout_s))
            except Exception:  # noqa: BLE001 - a slow registry or Serve: the rest of the numbers still count
                log.warning("model state for /metrics unavailable", exc_info=True)
        return render(merge(parts))

    async def _from_hub(self) -> list[Family]:
        async def get(ref):
            return await ref

        try:
            return await asyncio.wait_for(get(self.find_hub().families.remote(self.source)), self.timeout_s)
        except Exception:  # noqa: BLE001 - no hub (yet): this process' numbers only
            log.warning("the metrics hub did not answer; /metrics shows the ingress' numbers only", exc_info=True)
            return []


def gauge(name: str, doc: str, values: dict[tuple[tuple[str, str], ...], float]) -> Family:
    return (name, "gauge", doc, tuple(((name, labels), value) for labels, value in values.items()))


def model_state_families(entries: list, replicas: dict[str, tuple[int, int]]) -> list[Family]:
    """`openserve:model_status{model, status}` (1 for the model's current status) for every registry entry, and
    `openserve:model_replicas{model, state="target"|"running"}` for every model that has a Serve application.
    entries: registry ModelEntry list; replicas: application name -> (target, running)."""
    status, counts = {}, {}
    for entry in entries:
        status[(("model", entry.name), ("status", entry.status))] = 1.0
        target, running = replicas.get(entry.spec.deployment_name, (0, 0))
        counts[(("model", entry.name), ("state", "target"))] = float(target)
        counts[(("model", entry.name), ("state", "running"))] = float(running)
    return [
        gauge("openserve:model_status", "1 for each model's registry status", status),
        gauge("openserve:model_replicas", "Replicas of each model: Serve's target and those running", counts),
    ]


def serve_replicas() -> dict[str, tuple[int, int]]:
    """Application -> (target, running) replicas of its deployments, from Serve's controller (what serve.status()
    reads; it drops the target, so the details are read directly)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return {}
    out = {}
    for app, details in client.get_serve_details().get("applications", {}).items():
        deployments = details.get("deployments", {}).values()
        target = sum(d.get("target_num_replicas", 0) for d in deployments)
        running = sum(1 for d in deployments for r in d.get("replicas", []) if r.get("state") == "RUNNING")
        out[app] = (target, running)
    return out
