"""Who may use /admin: holders of server.admin_api_keys; with no admin keys set, loopback clients only.

Separate from server.api_keys (an API key never grants admin). Checked in an ASGI middleware, before any body is
read. Also names the caller for the registry's created_by / updated_by: the X-Openserve-User header
(informational) and how the caller got in.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api.errors import error_response
from serving.errors import AuthenticationError, PermissionDeniedError

OPEN_PATHS = frozenset({"/admin/docs", "/admin/openapi.json"})  # documentation only


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bearer(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def credential(scope: Scope, keys: list[bytes]) -> str:
    """How the caller got in ("key:<hash prefix>" or "loopback"); raises AuthenticationError (401) or
    PermissionDeniedError (403)."""
    if keys:
        token = _bearer(Headers(scope=scope))
        if token is None:
            raise AuthenticationError("Missing admin key: send it as 'Authorization: Bearer <key>'.",
                                      code="invalid_api_key")
        valid = False
        for key in keys:  # no early exit: the time taken says nothing about which key nearly matched
            valid |= hmac.compare_digest(key, token.encode())
        if not valid:
            raise AuthenticationError("Incorrect admin key provided.", code="invalid_api_key")
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:8]
    client = scope.get("client")
    if not is_loopback(client[0] if client else None):
        raise PermissionDeniedError(
            "The admin API answers loopback clients only, unless server.admin_api_keys is set.",
            code="admin_loopback_only",
        )
    return "loopback"


class AdminAuthMiddleware:
    """401 / 403 before the request reaches a route; the route reads the caller's name with `admin_actor`."""

    def __init__(self, app: ASGIApp, admin_api_keys: list[str]):
        self.app = app
        self._keys = [key.encode() for key in admin_api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            how = credential(scope, self._keys)
        except (AuthenticationError, PermissionDeniedError) as error:
            await error_response(error)(scope, receive, send)
            return
        user = re.sub(r"[^A-Za-z0-9._@+-]", "", Headers(scope=scope).get("x-openserve-user", ""))[:64] or "admin"
        scope.setdefault("state", {})["admin_actor"] = f"{user} via {how}"
        await self.app(scope, receive, send)


async def admin_actor(request: Request) -> str:
    """FastAPI dependency: the caller's name for the registry, e.g. "alice via key:1a2b3c4d"."""
    return request.state.admin_actor
