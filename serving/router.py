"""Maps the request's `model` field to the client of the deployment that serves it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serving.clients import ModelCard
from serving.errors import InvalidRequestError, ModelNotFoundError

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


class ModelRouter:
    """Exact-name lookup (no fuzzy matching) of served models, checked against the endpoint's task."""

    def __init__(self, models: list[ServedModel]):
        self._models = {m.card.id: m for m in models}

    def cards(self) -> list[ModelCard]:
        return [m.card for m in self._models.values()]

    def card(self, name: str) -> ModelCard:
        if name not in self._models:
            raise ModelNotFoundError(f"The model `{name}` does not exist.")
        return self._models[name].card

    def client(self, name: str, task: str) -> Any:
        """The client for `name`; 404 if unknown, 400 if it serves another task."""
        card = self.card(name)
        if card.task != task:
            raise InvalidRequestError(
                f"The model `{name}` is a {card.task} model; use {TASK_ENDPOINTS[card.task]}.", param="model"
            )
        return self._models[name].client
