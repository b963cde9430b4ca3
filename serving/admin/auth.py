"""Who may use /admin: holders of an admin key (server.admin_api_keys, or a key with the admin scope made with
/admin/keys); with no admin key anywhere, loopback clients only.

Scopes keep them apart: an inference key never grants admin. Checked in an ASGI middleware, before any body is
read. Also names the caller for the registry's created_by / updated_by: the X-Openserve-User header
(informational) and how the caller got in.
"""
from __future__ import annotations

import ipaddress
import re

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api.errors import error_response
from serving.errors import AuthenticationError, PermissionDeniedError
from serving.keys.ring import KeyRing

OPEN_PATHS = frozenset({"/admin/docs", "/admin/openapi.json"})  # documentation only


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bearer(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def credential(scope: Scope, ring: KeyRing) -> str:
    """How the caller got in ("key:<key id>" or "loopback"); raises AuthenticationError (401) or
    PermissionDeniedError (403). While any admin key exists (the YAML's admin_api_keys, or a registry key with the
    admin scope), /admin needs one, from anywhere; with none, loopback clients only."""
    if ring.admin_required:
        token = _bearer(Headers(scope=scope))
        if token is None:
            raise AuthenticationError("Missing admin key: send it as 'Authorization: Bearer <key>'.",
                                      code="invalid_api_key")
        record = ring.authenticate(token)
        if record is None:
            raise AuthenticationError("Incorrect admin key provided.", code="invalid_api_key")
        if not record.allows("admin"):
            raise PermissionDeniedError("This API key does not have the `admin` scope.", code="insufficient_scope")
        return "key:" + record.id
    client = scope.get("client")
    if not is_loopback(client[0] if client else None):
        raise PermissionDeniedError(
            "The admin API answers loopback clients only, unless an admin key is set.",
            code="admin_loopback_only",
        )
    return "loopback"


class AdminAuthMiddleware:
    """401 / 403 before the request reaches a route; the route reads the caller's name with `admin_actor`."""

    def __init__(self, app: ASGIApp, ring: KeyRing):
        self.app = app
        self.ring = ring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            how = credential(scope, self.ring)
        except (AuthenticationError, PermissionDeniedError) as error:
            await error_response(error)(scope, receive, send)
            return
        user = re.sub(r"[^A-Za-z0-9._@+-]", "", Headers(scope=scope).get("x-openserve-user", ""))[:64] or "admin"
        scope.setdefault("state", {})["admin_actor"] = f"{user} via {how}"
        await self.app(scope, receive, send)


async def admin_actor(request: Request) -> str:
    """FastAPI dependency: the caller's name for the registry, e.g. "alice via key:1a2b3c4d"."""
    return request.state.admin_actor
