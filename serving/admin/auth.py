"""Who may use /admin (its docs included): holders of an admin key (server.admin_api_keys, or a key with the admin
scope made with /admin/keys); with no admin key anywhere, loopback clients only, and then only requests a web page
cannot forge.

Scopes keep them apart: an inference key never grants admin. Checked in an ASGI middleware, before any body is
read. With no admin keys, a browser on the same machine is a loopback client: the Host header must name loopback
(else a DNS-rebound name reaches us as "same origin"), a cross-site request is refused (Origin not loopback, or
Sec-Fetch-Site: cross-site), and every POST / PATCH / DELETE must say Content-Type: application/json, which a page
can send cross-origin only after a CORS preflight that this server never grants. Also names the caller for the
registry's created_by / updated_by: the X-Openserve-User header (informational) and how the caller got in.
"""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api.errors import error_response
from serving.errors import AuthenticationError, PermissionDeniedError
from serving.keys.ring import KeyRing

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def names_loopback(host: str | None) -> bool:
    """`localhost` or a loopback IP literal (IPv6 in brackets or not), any case; no other name (DNS rebinding)."""
    if not host:
        return False
    host = host.lower().removeprefix("[").removesuffix("]")
    return host == "localhost" or is_loopback(host)


def _host_of(host_header: str) -> str:
    """The host of a Host header: "[::1]:8000" -> "[::1]", "localhost:8000" -> "localhost"."""
    if host_header.startswith("["):
        return host_header.partition("]")[0] + "]"
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def refuse_browser_forgery(headers: Headers) -> None:
    """With loopback trust only: PermissionDeniedError (403) for a request that a web page could have made."""
    if not names_loopback(_host_of(headers.get("host", ""))):
        raise PermissionDeniedError(
            "The admin API answers requests addressed to localhost, 127.0.0.1 or [::1] only (the Host header "
            "names another host), unless server.admin_api_keys is set.", code="admin_host_not_loopback",
        )
    origin = headers.get("origin")
    if origin is not None and not _is_loopback_origin(origin):
        raise PermissionDeniedError(
            f"The admin API refuses cross-site requests (Origin: {origin[:100]}).", code="admin_cross_site"
        )
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise PermissionDeniedError(
            "The admin API refuses cross-site requests (Sec-Fetch-Site: cross-site).", code="admin_cross_site"
        )


def _is_loopback_origin(origin: str) -> bool:
    """"http://localhost:3000" yes; "https://example.com", "null" (sandboxed or file pages), garbage no."""
    try:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and names_loopback(parts.hostname)
    except ValueError:
        return False


def require_json(scope: Scope) -> None:
    """PermissionDeniedError (403) for a write without Content-Type: application/json (a body or not)."""
    if scope["method"] not in WRITE_METHODS:
        return
    media_type = Headers(scope=scope).get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise PermissionDeniedError(
            f"{scope['method']} on the admin API needs the header Content-Type: application/json (even without a "
            "body), so that no web page can send it.", code="admin_json_required",
        )


def _bearer(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def credential(scope: Scope, ring: KeyRing) -> str:
    """How the caller got in ("key:<key id>" or "loopback"); raises AuthenticationError (401) or
    PermissionDeniedError (403: not loopback, or a request a web page could have forged). While any admin key exists
    (the YAML's admin_api_keys, or a registry key with the admin scope), /admin needs one, from anywhere; with none,
    loopback clients only."""
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
    refuse_browser_forgery(Headers(scope=scope))
    return "loopback"


class AdminAuthMiddleware:
    """401 / 403 before the request reaches a route (the docs included); the route reads the caller's name with
    `admin_actor`."""

    def __init__(self, app: ASGIApp, ring: KeyRing):
        self.app = app
        self.ring = ring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            how = credential(scope, self.ring)
            require_json(scope)
        except (AuthenticationError, PermissionDeniedError) as error:
            await error_response(error)(scope, receive, send)
            return
        user = re.sub(r"[^A-Za-z0-9._@+-]", "", Headers(scope=scope).get("x-openserve-user", ""))[:64] or "admin"
        scope.setdefault("state", {})["admin_actor"] = f"{user} via {how}"
        await self.app(scope, receive, send)


async def admin_actor(request: Request) -> str:
    """FastAPI dependency: the caller's name for the registry, e.g. "alice via key:1a2b3c4d"."""
    return request.state.admin_actor
