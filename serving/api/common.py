"""What every endpoint module shares: the router dependency and fast JSON responses."""
from __future__ import annotations

from fastapi import Request, Response
from pydantic import BaseModel

from serving.api.context import request_info
from serving.api.usage import RequestRouter
from serving.clients import ModelCard
from serving.router import ModelRouter


async def get_router(request: Request) -> ModelRouter | RequestRouter:
    """FastAPI dependency: the ModelRouter that build_app stored in app.state, as this request sees it (its key's
    models; clients that record its usage) when the request middleware runs.

    `async` on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request that
    cost ~0.1 ms of CPU here for a dictionary lookup (see the Benchmarks section of the README)."""
    info = request_info(request.scope)
    return request.app.state.router if info is None else RequestRouter(request.app.state.router, info)


def json_response(body: BaseModel, status_code: int = 200) -> Response:
    """Serialize with pydantic directly (skips FastAPI's re-validation of large bodies such as embeddings)."""
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json")


def context_size(card: ModelCard) -> int | None:
    """The LLM's context size (prompt + completion tokens) when its card states it (`max_model_len`)."""
    value = card.metadata.get("max_model_len")
    return int(value) if value else None
