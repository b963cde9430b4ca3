"""GET /health (the process is up), GET /ready (every deployed model answers; ?model=NAME for one) and
GET /metrics (Prometheus). None needs an API key (probes and scrapers); none calls a model."""
from __future__ import annotations

import asyncio
from typing import Protocol

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from serving.errors import ModelNotFoundError, NotFoundError
from serving.router import ModelRouter

router = APIRouter(tags=["operations"])


class Readiness(Protocol):
    async def models(self) -> dict[str, str]:
        """Every model that should serve -> "ready" when this ingress routes it, else its registry status."""


class RouterReadiness:
    """Without a registry (tests, embedded use): whatever the router serves is ready."""

    def __init__(self, router: ModelRouter):
        self.router = router

    async def models(self) -> dict[str, str]:
        return {card.id: "ready" for card in self.router.cards()}


class RegistryReadiness:
    """The registry's deployed models, each "ready" once this ingress routes it (so /ready turns 200 only when
    requests for every model get through here), else the registry's status (deploying, failed, ...), or "routing"
    while the registry says ready but this ingress has not picked the model up yet."""

    def __init__(self, store, router: ModelRouter):
        self.store = store
        self.router = router

    async def models(self) -> dict[str, str]:
        entries = await asyncio.to_thread(self.store.list)
        routed = {card.id for card in self.router.cards()}
        return {e.name: _readiness(e.status, e.name in routed) for e in entries if e.deployed}


def _readiness(status: str, routed: bool) -> str:
    if routed:
        return "ready"
    return "routing" if status in ("ready", "updating") else status


@router.get("/health")
async def health() -> dict:
    """200 while the server process answers (liveness)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, model: str | None = None) -> JSONResponse:
    """200 when every deployed model (or `model`) is ready, else 503 naming those that are not."""
    models = await request.app.state.readiness.models()
    if model is not None:
        if model not in models:
            raise ModelNotFoundError(f"The model `{model}` is not deployed.")
        models = {model: models[model]}
    waiting = {name: status for name, status in models.items() if status != "ready"}
    body = {"status": "not_ready" if waiting else "ready", "models": models}
    if waiting:
        body["not_ready"] = sorted(waiting)
    return JSONResponse(body, status_code=503 if waiting else 200)


_PROMETHEUS_TEXT = {200: {"description": "Prometheus text exposition format",
                          "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}}


@router.get("/metrics", response_class=Response, responses=_PROMETHEUS_TEXT)
async def metrics(request: Request) -> Response:
    """Prometheus text format: the whole server's numbers (see serving/metrics)."""
    scraper = request.app.state.scraper
    if scraper is None:
        raise NotFoundError("Metrics are turned off (server.metrics: false).")
    return Response(await scraper.render(), media_type=CONTENT_TYPE_LATEST)
