"""Pure ASGI middlewares (they keep streaming responses intact): API-key auth and the request-body size limit."""
from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.errors import error_response
from serving.errors import AuthenticationError, RequestTooLargeError

OPEN_PATHS = frozenset({"/health"})  # reachable without an API key (load balancers, orchestrators)


class ApiKeyMiddleware:
    """Require `Authorization: Bearer <key>` on every path but OPEN_PATHS; keys are compared in constant time."""

    def __init__(self, app: ASGIApp, api_keys: list[str]):
        self.app = app
        self._keys = [key.encode() for key in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope)
        if token is None:
            error = AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>'.", code="invalid_api_key"
            )
        elif not self._is_valid(token):
            error = AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        else:
            await self.app(scope, receive, send)
            return
        await error_response(error)(scope, receive, send)

    def _is_valid(self, token: bytes) -> bool:
        valid = False
        for key in self._keys:  # no early exit: the time taken says nothing about which key nearly matched
            valid |= hmac.compare_digest(key, token)
        return valid


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
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
