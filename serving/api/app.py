"""build_app: the FastAPI ingress app (routes, error mapping, keys, body limit, /health /ready /metrics)."""
from __future__ import annotations

from fastapi import FastAPI

from serving.api import audio, chat, completions, embeddings, images, models, ollama, ops, responses, tokenize
from serving.api.disconnect import DisconnectMiddleware
from serving.api.errors import install_error_handlers
from serving.api.middleware import BodyLimitMiddleware, KeyAuthMiddleware
from serving.api.openapi import add_models, amend_openapi
from serving.keys.records import config_records
from serving.keys.ring import KeyRing
from serving.metrics.scrape import Scraper
from serving.protocol.chat import ChatCompletionChunk
from serving.protocol.responses import ResponseEvent
from serving.router import ModelRouter

DEFAULT_MAX_REQUEST_BYTES = 10 * 2**20


def build_app(
    router: ModelRouter, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, api_keys: list[str] | None = None,
    keys: KeyRing | None = None, readiness: ops.Readiness | None = None, scraper: Scraper | None = None,
) -> FastAPI:
    """An OpenAI-compatible app; routes reach `router` via app.state.router. Keys (a ring, or plain `api_keys`)
    guard all but /health, /ready and /metrics while the ring holds an inference key."""
    app = FastAPI(title="Local OpenAI-compatible model server")
    app.state.router = router
    app.state.readiness = readiness or ops.RouterReadiness(router)
    app.state.scraper = scraper
    for module in (chat, completions, responses, embeddings, images, audio, models, ollama, ops, tokenize):
        app.include_router(module.router)
    # Middlewares added later wrap earlier ones: keys are checked first (no body is read for a bad key), then the
    # body limit, then the disconnect watch (once the body has been read).
    app.add_middleware(DisconnectMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    ring = keys if keys is not None else KeyRing(config_records(list(api_keys or []), []))
    app.add_middleware(KeyAuthMiddleware, ring=ring)
    install_error_handlers(app)
    # Streamed by chat and responses; no route returns them.
    amend_openapi(app, lambda schema: add_models(schema, ChatCompletionChunk, ResponseEvent))
    return app
