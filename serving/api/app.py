"""build_app: the FastAPI ingress app (routes, error mapping, auth, body limit) over a ModelRouter."""
from __future__ import annotations

from fastapi import FastAPI

from serving.api import audio, chat, completions, embeddings, images, models
from serving.api.disconnect import DisconnectMiddleware
from serving.api.errors import install_error_handlers
from serving.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from serving.api.openapi import add_models, amend_openapi
from serving.protocol.chat import ChatCompletionChunk
from serving.router import ModelRouter

DEFAULT_MAX_REQUEST_BYTES = 10 * 2**20


def build_app(
    router: ModelRouter, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, api_keys: list[str] | None = None
) -> FastAPI:
    """An OpenAI-compatible app; routes reach `router` via app.state.router. Keys, if given, guard all but /health."""
    app = FastAPI(title="Local OpenAI-compatible model server")
    app.state.router = router
    for module in (chat, completions, embeddings, images, audio, models):
        app.include_router(module.router)
    # Middlewares added later wrap earlier ones: auth runs first (no body is read for a bad key), then the limit.
    app.add_middleware(DisconnectMiddleware)  # inside the limit: it watches once the body has been read
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    if api_keys:
        app.add_middleware(ApiKeyMiddleware, api_keys=list(api_keys))
    install_error_handlers(app)
    amend_openapi(app, lambda schema: add_models(schema, ChatCompletionChunk))  # streamed by chat; no route has it
    return app
