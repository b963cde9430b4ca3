"""The HTTP ingress: a FastAPI app (built on the replica) that routes by `model` to the model deployments."""
from __future__ import annotations

from ray import serve

from serving.api.app import build_app
from serving.clients import ModelCard
from serving.deployments.handle_clients import HANDLE_CLIENTS
from serving.router import ModelRouter, ServedModel


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, server: dict, cards: list[dict], handles: list):
        served = []
        for card, handle in zip(cards, handles):
            card = ModelCard(**card)
            served.append(ServedModel(card, HANDLE_CLIENTS[card.task](handle)))
        self._app = build_app(
            ModelRouter(served), max_request_bytes=server["max_request_bytes"], api_keys=server["api_keys"]
        )

    def __serve_build_asgi_app__(self):
        return self._app
