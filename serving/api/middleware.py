"""Pure ASGI middlewares (they keep streaming responses intact): the request's id, metrics and access log line;
API keys (scope, allow-list, limits); the request-body size limit."""
from __future__ import annotations

import time
from typing import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.context import QUIET_PATHS, STATE_KEY, RequestInfo, endpoint_of, request_id_of, request_info
from serving.api.errors import error_response
from serving.errors import (AuthenticationError, PermissionDeniedError, RateLimitExceededError,
                            RequestTooLargeError)
from serving.keys.ring import KeyRing
from serving.logs import REQUEST_ID, AccessLog
from serving.metrics import definitions as m

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})  # reachable without an API key (probes, Prometheus)
_REQUESTS = m.LabelCache(m.REQUESTS)
_LATENCY = m.LabelCache(m.E2E_LATENCY)


class RequestMiddleware:
    """Outermost: gives every HTTP request an id (the client's X-Request-Id, or a new one) echoed on the response
    and set for every log line of the request; then counts it in the metrics and writes its access-log line (one
    per request, after its last byte; probes and scrapes are counted but not logged)."""

    def __init__(self, app: ASGIApp, *, access_log: AccessLog | None = None, metrics_enabled: bool = True,
                 on_request: Callable[[str], None] | None = None):
        self.app = app
        self.access_log = access_log  # None: no access log
        self.metrics_enabled = metrics_enabled
        self.on_request = on_request  # e.g. hand the id on to the model replicas' log lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        info = RequestInfo(request_id_of(scope), scope["method"], path, endpoint_of(path))
        scope.setdefault("state", {})[STATE_KEY] = info
        id_header = (b"x-request-id", info.request_id.encode())
        token = REQUEST_ID.set(info.request_id)
        if self.on_request is not None:
            self.on_request(info.request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._done(info, time.perf_counter() - start, scope)
            REQUEST_ID.reset(token)

    def _done(self, info: RequestInfo, latency_s: float, scope: Scope) -> None:
        status = info.status or 499  # no response started: the client went away first (nginx's 499)
        if self.metrics_enabled:
            _REQUESTS(info.model, info.endpoint, str(status)).inc()
            _LATENCY(info.model, info.endpoint).observe(latency_s)
        if self.access_log is not None and info.path not in QUIET_PATHS:
            _log_access(self.access_log, info, status, latency_s, scope)


def _log_access(log: AccessLog, info: RequestInfo, status: int, latency_s: float, scope: Scope) -> None:
    """One line: method, path, status, latency, model, key id (never the key), what the request used."""
    fields = {"method": info.method, "path": info.path, "status": status, "latency_ms": round(latency_s * 1e3, 2),
              "model": info.model or None, "key_id": info.key.id if info.key else None,
              "client": (scope.get("client") or ("-",))[0]}
    used = {"prompt_tokens": info.prompt_tokens, "completion_tokens": info.completion_tokens,
            "images": info.images, "characters": info.characters}
    fields.update({k: v for k, v in used.items() if v})
    extra = "".join(f" {k}={v}" for k, v in used.items() if v)
    message = (f"{info.method} {info.path} {status} {latency_s * 1e3:.1f}ms model={info.model or '-'} "
               f"key={fields['key_id'] or '-'}{extra}")
    log.write(info.request_id, message, fields)


class KeyAuthMiddleware:
    """API keys on every path but OPEN_PATHS, while the key ring holds at least one inference key (with none, the
    server is open and presented keys are not looked at). 401 for a missing, wrong or revoked key; 403 for a key
    without the inference scope; 429 over a key's limits (OpenAI's x-ratelimit-* headers on every response of a
    limited key). The allow-list of models is checked where the model is looked up (serving/api/usage.py)."""

    def __init__(self, app: ASGIApp, ring: KeyRing):
        self.app = app
        self.ring = ring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or not self.ring.inference_required:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        record = self.ring.authenticate(token) if token else None
        if record is None:
            message = "Incorrect API key provided." if token else (
                "Missing API key: send it as 'Authorization: Bearer <key>'.")
            await error_response(AuthenticationError(message, code="invalid_api_key"))(scope, receive, send)
            return
        if not record.allows("inference"):
            error = PermissionDeniedError("This API key does not have the `inference` scope.",
                                          code="insufficient_scope")
            await error_response(error)(scope, receive, send)
            return
        info = request_info(scope)
        if info is not None:
            info.key = record
        limiter = self.ring.limiter(record)
        if limiter is None:
            await self.app(scope, receive, send)
            return
        try:
            limiter.admit()
        except RateLimitExceededError as error:
            await error_response(error)(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.encode(), v.encode()) for k, v in limiter.headers().items()]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            limiter.release(info.billed_tokens() if info is not None else 0)


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class BodyLimitMiddleware:
    """413 when Content-Length, or the bytes actually received, exceed max_bytes. The body is read once and replayed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _content_length(scope) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        body, disconnected = await self._read_body(receive)
        if body is None:
            await self._reject(scope, receive, send)
            return
        if disconnected:
            return  # the client left before sending its whole request: nobody to answer
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:  # later calls wait for the disconnect, which streaming responses listen for
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, bool]:
        """(body, disconnected); body None when it grew past the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None, False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = RequestTooLargeError(f"Request body too large: the limit is {self.max_bytes} bytes.")
        await error_response(error)(scope, receive, send)


def _content_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
