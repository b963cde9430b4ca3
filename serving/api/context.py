"""RequestInfo: what the request middleware, the key check and the routes learn about one request, kept in the
ASGI scope's state (the access log line, the metrics and the key's token charge are made from it)."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from starlette.types import Scope

from serving.keys.records import KeyRecord

STATE_KEY = "openserve_request"
# Endpoint label values: a fixed set, so a client cannot grow the metrics with made-up paths.
ENDPOINTS = frozenset({
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/images/generations", "/v1/audio/speech",
    "/v1/models", "/health", "/ready", "/metrics",
    "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/tags", "/api/show", "/api/ps", "/api/version",
})
QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})  # probes and scrapes: counted, not access-logged
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def endpoint_of(path: str) -> str:
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models"
    if path == "/admin" or path.startswith("/admin/"):
        return "/admin"
    return "other"


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-Id if it is a sane token (no spaces or control characters: it goes into log lines),
    else a new random one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _CLIENT_ID.fullmatch(text):
                return text
            break
    return secrets.token_hex(12)


@dataclass
class RequestInfo:
    request_id: str
    method: str
    path: str
    endpoint: str
    model: str = ""  # the served model's canonical name, once the route resolved it (never the raw request field)
    key: KeyRecord | None = None
    prompt_tokens: int = 0  # LLM prompt tokens, embedding input tokens
    completion_tokens: int = 0
    images: int = 0
    characters: int = 0  # speech input
    status: int = 0

    def billed_tokens(self) -> int:
        """What the request costs against a key's tokens-per-minute limit."""
        return self.prompt_tokens + self.completion_tokens + self.images + self.characters


def request_info(scope: Scope) -> RequestInfo | None:
    return scope.get("state", {}).get(STATE_KEY)
