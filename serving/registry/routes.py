"""RegistryRoutes: keeps an ingress' ModelRouter equal to the registry's serving models (status ready or updating).

Each ingress polls the registry's generation (one tiny query) every `interval_s` and reloads only when it moved;
the admin API also refreshes right after each change, so the ingress that took the change routes it at once.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from serving.clients import ModelCard
from serving.config import ModelConfig
from serving.errors import RegistryUnavailableError
from serving.registry.controller import ROUTED_STATUSES
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
    """What a model's client depends on: a client is kept across reloads while this stays the same."""
    return spec.name, spec.task, spec.upstream.model_dump_json() if spec.upstream else None


def model_card(entry: ModelEntry) -> ModelCard:
    model = entry.spec
    metadata = {"source": model.source, **{k: v for k, v in model.options.items() if k in CARD_OPTIONS}}
    if model.upstream is not None:
        metadata["upstream"] = model.upstream.base_url
    if model.description:
        metadata["description"] = model.description
    return ModelCard(
        id=model.name, task=model.task, created=epoch(entry.created_at), owned_by="openserve", metadata=metadata
    )


class RegistryRoutes:
    def __init__(self, store: RegistryStore, router: ModelRouter, clients: ClientFactory, interval_s: float = 1.0):
        self.store = store
        self.router = router
        self.clients = clients  # in the ingress: Ray handle clients, and upstream clients that call remotes directly
        self.interval_s = interval_s
        self._generation: int | None = None
        self._clients: dict[tuple, Any] = {}  # client_key -> client, kept across reloads
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Reload the routes if the registry changed since the last reload."""
        async with self._lock:
            loaded = await asyncio.to_thread(self._load)
            if loaded is not None:
                generation, served, clients = loaded
                self.router.replace(served)
                dropped = [c for key, c in self._clients.items() if clients.get(key) is not c]
                self._clients = clients
                self._generation = generation
                for client in dropped:
                    self.clients.drop(client)

    def _load(self) -> tuple[int | None, list[ServedModel], dict] | None:
        """(generation, served models, clients), or None when nothing changed. Runs in a thread: creating a
        handle asks Serve's controller whether the deployment exists."""
        generation = self.store.generation()
        if generation == self._generation:
            return None
        served, clients = [], {}
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
            spec = entry.spec
            served.append(ServedModel(model_card(entry), clients[key], tuple(spec.aliases), tuple(spec.fallbacks)))
        return generation, served, clients

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
