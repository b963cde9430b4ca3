"""RegistryRoutes: keeps an ingress' ModelRouter equal to the registry's serving models (status ready or updating).

Each ingress polls the registry's generation (one tiny query) every `interval_s` and reloads only when it moved;
the admin API also refreshes right after each change, so the ingress that took the change routes it at once.
Models that scale to zero also get their live state (scaled_to_zero, starting, ready) on their /v1/models card,
from the controller's view of their replicas, looked at every `states_every_s` while there are such models.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Protocol

from serving.clients import ModelCard
from serving.config import ModelConfig
from serving.errors import RegistryUnavailableError
from serving.registry.controller import ROUTED_STATUSES, Replicas
from serving.registry.entry import ModelEntry, epoch
from serving.registry.store import RegistryStore
from serving.router import ModelRouter, ServedModel

log = logging.getLogger("serving.registry")

# Backend options the HTTP layer needs before calling the model (image defaults and limits, an LLM's context size).
CARD_OPTIONS = ("default_size", "default_steps", "default_guidance_scale", "size_multiple", "max_pixels",
                "max_model_len")


class ClientFactory(Protocol):
    """Makes the client that reaches a model, and hears when the routes stop using one."""

    def make(self, spec: ModelConfig) -> Any: ...  # may run in a worker thread
    def drop(self, client: Any) -> None: ...  # on the event loop


def client_key(spec: ModelConfig) -> tuple:
    """What a model's client depends on (its remote server, its deadlines): a client is kept across reloads while
    this stays the same."""
    return (spec.name, spec.task, spec.upstream.model_dump_json() if spec.upstream else None, spec.queue_timeout_s,
            spec.request_timeout_s, spec.cold_start_timeout_s)


def serving_state(status: str, replicas: Replicas | None) -> str:
    """What /v1/models says of a routed model: updating, or whether a replica runs, starts, or none is wanted."""
    if status == "updating":
        return "updating"
    if replicas is None or replicas.running:
        return "ready"
    return "starting" if replicas.target else "scaled_to_zero"


def card_of(model: ModelConfig, created: int = 0, state: str = "ready") -> ModelCard:
    """What /v1/models says of `model` (and what the HTTP layer reads of its options)."""
    metadata = {"source": model.source, **{k: v for k, v in model.options.items() if k in CARD_OPTIONS}}
    if model.upstream is not None:
        metadata["upstream"] = model.upstream.base_url
    if model.description:
        metadata["description"] = model.description
    return ModelCard(id=model.name, task=model.task, created=created, owned_by="openserve", metadata=metadata,
                     state=state)


def model_card(entry: ModelEntry, state: str | None = None) -> ModelCard:
    return card_of(entry.spec, epoch(entry.created_at), state or serving_state(entry.status, None))


def served_model(model: ModelConfig, make_client: Callable[[ModelConfig], Any]) -> ServedModel:
    """A fixed route (no registry): a Serve config file's models."""
    return ServedModel(card_of(model), make_client(model), tuple(model.aliases))


class RegistryRoutes:
    def __init__(
        self, store: RegistryStore, router: ModelRouter, clients: ClientFactory, interval_s: float = 1.0,
        replica_view: Callable[[], Awaitable[dict[str, Replicas]]] | None = None, states_every_s: float = 2.0,
    ):
        self.store = store
        self.router = router
        self.clients = clients  # in the ingress: Ray handle clients, and upstream clients that call remotes directly
        self.interval_s = interval_s
        self.replica_view = replica_view  # model name -> its replicas (the controller's view)
        self.states_every_s = states_every_s
        self._generation: int | None = None
        self._clients: dict[tuple, Any] = {}  # client_key -> client, kept across reloads
        self._scaling_to_zero: set[str] = set()  # routed models with min_replicas 0
        self._replicas: tuple[float, dict[str, Replicas]] = (float("-inf"), {})
        self._states: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Reload the routes if the registry (or a scale-to-zero model's state) changed since the last reload."""
        async with self._lock:
            replicas = await self._watched_replicas()
            loaded = await asyncio.to_thread(self._load, replicas)
            if loaded is not None:
                generation, served, clients = loaded
                self.router.replace(served)
                dropped = [c for key, c in self._clients.items() if clients.get(key) is not c]
                self._clients = clients
                self._generation = generation
                for client in dropped:
                    self.clients.drop(client)

    async def _watched_replicas(self) -> dict[str, Replicas]:
        """The replicas of the models that scale to zero, looked at most every states_every_s ({} if none)."""
        if self.replica_view is None or not self._scaling_to_zero:
            return {}
        taken, replicas = self._replicas
        if time.monotonic() - taken >= self.states_every_s:
            try:
                replicas = await self.replica_view()
            except Exception as e:  # the controller restarts: keep the last states
                log.warning("replica states unavailable: %r", e)
            self._replicas = (time.monotonic(), replicas)
        return replicas

    def _load(self, replicas: dict[str, Replicas]) -> tuple[int | None, list[ServedModel], dict] | None:
        """(generation, served models, clients), or None when nothing changed. Runs in a thread: creating a
        handle asks Serve's controller whether the deployment exists."""
        generation = self.store.generation()
        if generation == self._generation and self._states_of(self._scaling_to_zero, replicas) == self._states:
            return None
        served, clients, zero = [], {}, set()
        for entry in self.store.list():
            if entry.status not in ROUTED_STATUSES:
                continue
            key = client_key(entry.spec)
            try:
                clients[key] = self._clients.get(key) or self.clients.make(entry.spec)
            except Exception as e:  # e.g. its application is being deleted: retry on the next poll
                log.warning("no route to %s yet: %r", entry.name, e)
                generation = None
                continue
            if entry.spec.cold_start_timeout_s is not None:
                zero.add(entry.name)
            state = serving_state(entry.status, replicas.get(entry.name))
            spec = entry.spec
            served.append(ServedModel(model_card(entry, state), clients[key], tuple(spec.aliases), tuple(spec.fallbacks)))
        self._scaling_to_zero, self._states = zero, self._states_of(zero, replicas)
        return generation, served, clients

    @staticmethod
    def _states_of(names: set[str], replicas: dict[str, Replicas]) -> dict[str, str]:
        return {name: serving_state("ready", replicas.get(name)) for name in names}

    async def run(self) -> None:
        """Poll forever (a task of the ingress replica)."""
        while True:
            try:
                await self.refresh()
            except RegistryUnavailableError as e:  # locked or unreachable: keep the current routes, try again
                log.warning("routes not refreshed: %s", e)
            except Exception:  # a bug: keep the current routes, say where, try again
                log.exception("refreshing the routes from the registry failed")
            await asyncio.sleep(self.interval_s)
