"""/v1/models: response models mirroring OpenAI's models API."""
from __future__ import annotations

from typing import Literal

from serving.clients import ModelCard
from serving.protocol.common import OpenAIResponse


class ModelObject(OpenAIResponse):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    task: str  # extension (OpenAI clients keep unknown fields): chat | embedding | image | speech
    state: str = "ready"  # extension: ready | updating | starting | scaled_to_zero (a request starts a replica)

    @classmethod
    def from_card(cls, card: ModelCard) -> ModelObject:
        return cls(id=card.id, created=card.created, owned_by=card.owned_by, task=card.task, state=card.state)


class ModelList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ModelObject]
