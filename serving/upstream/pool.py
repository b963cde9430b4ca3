"""UpstreamPool: the upstream models an ingress serves: a client per model (its own connection pool and circuit
breaker), active health checks, retiring replaced clients once their calls end, and the state /admin shows."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable, Mapping

from serving.config import ModelConfig
from serving.metrics import definitions as m
from serving.upstream.breaker import OPEN, STATES, CircuitBreaker
from serving.upstream.clients import UPSTREAM_CLIENTS
from serving.upstream.config import key_problem
from serving.upstream.transport import UpstreamTransport

log = logging.getLogger("serving.upstream")

StateListener = Callable[[str, str, str], None]  # (model, old state, new state)


class UpstreamModel:
    """One upstream model: its transport (pool, timeouts, retries, breaker), its client, its health checks."""

    def __init__(self, spec: ModelConfig, environ: Mapping[str, str], clock: Callable[[], float],
                 listener: StateListener | None = None):
        config = spec.upstream
        self.spec = spec
        self.clock = clock
        self.breaker = CircuitBreaker(config.breaker, clock, on_change=self._changed)
        key = environ.get(config.api_key_env) if config.api_key_env else None
        problem = key_problem(config, environ)
        self.transport = UpstreamTransport(spec.name, config, key, self.breaker, problem=problem)
        self.client = UPSTREAM_CLIENTS[spec.task](self.transport, config.remote_model(spec.name))
        self.listener = listener
        self.next_check = clock()
        self.health: dict[str, Any] = {"ok": None, "checked_at": None, "error": None}
        self._show(self.breaker.state)

    def _changed(self, old: str, new: str) -> None:
        log.warning("upstream %s (%s): circuit %s -> %s; last failure: %s", self.spec.name,
                    self.spec.upstream.base_url, old, new, self.breaker.last_failure)
        self._show(new)
        if new == OPEN:
            m.UPSTREAM_OPENED.labels(self.spec.name).inc()
        if self.listener is not None:
            self.listener(self.spec.name, old, new)

    def _show(self, state: str) -> None:
        """openserve:upstream_circuit_state: 1 for `state`, 0 for the others."""
        for each in STATES:
            m.UPSTREAM_CIRCUIT.labels(self.spec.name, each).set(1 if each == state else 0)

    def forget_metrics(self) -> None:
        """The model is no longer routed here: its circuit's series go (a counter's total stays in Prometheus)."""
        for each in STATES:
            m.UPSTREAM_CIRCUIT.remove(self.spec.name, each)

    def due(self) -> bool:
        return self.spec.upstream.health_check_s > 0 and self.clock() >= self.next_check

    async def check(self) -> None:
        """One active health check; its result moves the breaker (see CircuitBreaker.health)."""
        ok, reason = await self.transport.health_check()
        self.breaker.health(ok, reason)
        self.health = {"ok": ok, "checked_at": time.time(), "error": reason or None}
        self.next_check = self.clock() + self.spec.upstream.health_check_s

    def state(self) -> dict:
        config = self.spec.upstream
        return {
            "name": self.spec.name, "task": self.spec.task, "base_url": config.base_url,
            "remote_model": config.remote_model(self.spec.name), "in_flight": self.transport.in_flight,
            "circuit": self.breaker.snapshot(), "health": dict(self.health),
            "problem": self.transport.problem,
        }


class UpstreamPool:
    def __init__(self, environ: Mapping[str, str] = os.environ, clock: Callable[[], float] = time.monotonic,
                 listener: StateListener | None = None, tick_s: float = 0.5):
        self.environ = environ
        self.clock = clock
        self.listener = listener
        self.tick_s = tick_s
        self._live: dict[int, UpstreamModel] = {}  # id(client) -> its model
        self._retired: list[UpstreamModel] = []

    def client(self, spec: ModelConfig) -> Any:
        """A new client for an upstream model (callable from any thread: it touches no event loop)."""
        model = UpstreamModel(spec, self.environ, self.clock, self.listener)
        self._live[id(model.client)] = model
        return model.client

    def drop(self, client: Any) -> None:
        """The client is no longer routed: stop its health checks; its connections close once its calls end."""
        model = self._live.pop(id(client), None)
        if model is not None:
            self._retired.append(model)
            if all(other.spec.name != model.spec.name for other in self._live.values()):
                model.forget_metrics()  # not when a changed configuration's new client replaced it

    def models(self) -> list[UpstreamModel]:
        return list(self._live.values())

    def states(self) -> list[dict]:
        return sorted((m.state() for m in self.models()), key=lambda s: s["name"])

    async def tick(self) -> None:
        """Run the health checks that are due, concurrently; close retired clients with no call in flight."""
        due = [m for m in self.models() if m.due()]
        if due:
            await asyncio.gather(*(m.check() for m in due), return_exceptions=True)
        idle = [m for m in self._retired if m.transport.in_flight == 0]
        self._retired = [m for m in self._retired if m.transport.in_flight > 0]
        for model in idle:
            await model.transport.close()

    async def run(self) -> None:
        """Forever (a task of the ingress replica)."""
        while True:
            try:
                await self.tick()
            except Exception:  # a bug must not end the health checks of every upstream
                log.exception("upstream health checks failed")
            await asyncio.sleep(self.tick_s)

    async def close(self) -> None:
        for model in self.models() + self._retired:
            await model.transport.close()
