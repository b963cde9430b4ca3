"""Maps the request's `model` field (a name or an alias) to the client of the deployment that serves it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from serving.clients import ModelCard
from serving.errors import InvalidRequestError, ModelNotFoundError
from serving.fallback import FALLBACK_CLIENTS

TASK_ENDPOINTS = {
    "chat": "/v1/chat/completions and /v1/completions",
    "embedding": "/v1/embeddings",
    "image": "/v1/images/generations",
    "speech": "/v1/audio/speech",
}


@dataclass
class ServedModel:
    card: ModelCard
    client: Any  # ChatClient | EmbeddingClient | ImageClient | SpeechClient, by card.task
    aliases: tuple[str, ...] = ()  # other ids that reach this model (not listed by /v1/models)
    fallbacks: tuple[str, ...] = ()  # models that answer while this one is unavailable or overloaded (in order)


class ModelRouter:
    """Exact-name lookup (no fuzzy matching) of served models, checked against the endpoint's task.

    The table can be replaced while requests run (the registry adds and removes models): a request keeps the
    client it looked up, and a lookup sees either the old table or the new one, never a mix.
    """

    def __init__(self, models: Iterable[ServedModel] = ()):
        self.replace(models)

    def replace(self, models: Iterable[ServedModel]) -> None:
        models = list(models)
        by_id = {m.card.id: m for m in models}
        for m in models:
            for alias in m.aliases:
                by_id.setdefault(alias, m)
        self._table = ([m.card for m in models], by_id)  # one assignment: readers never see half a table

    def cards(self) -> list[ModelCard]:
        return list(self._table[0])

    def _served(self, name: str) -> ServedModel:
        served = self._table[1].get(name)
        if served is None:
            raise ModelNotFoundError(f"The model `{name}` does not exist.")
        return served

    def card(self, name: str) -> ModelCard:
        return self._served(name).card

    def client(self, name: str, task: str) -> Any:
        """The client for `name` (with its fallbacks, if it has any); 404 if unknown, 400 if it serves another task."""
        served = self._served_for(name, task)
        if not served.fallbacks:
            return served.client
        return FALLBACK_CLIENTS[task](served.client, served.fallbacks, lambda other: self._fallback(other, task))

    def own_client(self, name: str, task: str) -> Any:
        """The model's own client, without its fallbacks (the admin API reads its replicas); 404 / 400 as client."""
        return self._served_for(name, task).client

    def _served_for(self, name: str, task: str) -> ServedModel:
        served = self._served(name)
        if served.card.task != task:
            raise InvalidRequestError(
                f"The model `{name}` is a {served.card.task} model; use {TASK_ENDPOINTS[served.card.task]}.",
                param="model",
            )
        return served

    def _fallback(self, name: str, task: str) -> Any:
        """A fallback's own client (not its fallbacks), or None when it is not served now or serves another task."""
        served = self._table[1].get(name)
        return served.client if served is not None and served.card.task == task else None
