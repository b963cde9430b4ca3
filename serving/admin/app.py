"""The admin FastAPI app (its own auth, docs at /admin/docs) and the ASGI switch that puts it beside the OpenAI app."""
from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.admin import keys, routes, upstreams as upstream_routes
from serving.admin.auth import AdminAuthMiddleware
from serving.admin.service import RegistryAdmin
from serving.api.errors import install_error_handlers
from serving.api.middleware import BodyLimitMiddleware
from serving.keys.records import config_records
from serving.keys.ring import KeyRing
from serving.upstream.pool import UpstreamPool

ADMIN_PREFIX = "/admin"


def build_admin_app(admin: RegistryAdmin, *, admin_api_keys: list[str] | None = None, max_request_bytes: int,
                    ring: KeyRing | None = None, key_admin: keys.KeyAdmin | None = None,
                    upstreams: UpstreamPool | None = None) -> FastAPI:
    """/admin/models over `admin` (and /admin/keys over `key_admin`, if given), /admin/upstreams over the ingress'
    UpstreamPool; admin keys from `ring`, or else `admin_api_keys`. Errors are OpenAI error bodies, like the rest
    of the API."""
    app = FastAPI(
        title="openserve admin", description="The model registry: register, deploy and retire models at runtime.",
        docs_url=ADMIN_PREFIX + "/docs", openapi_url=ADMIN_PREFIX + "/openapi.json", redoc_url=None,
    )
    app.state.admin = admin
    app.state.upstreams = upstreams
    app.include_router(routes.router)
    if key_admin is not None:
        app.state.keys = key_admin
        app.include_router(keys.router)
    app.include_router(upstream_routes.router)
    # Middlewares added later wrap earlier ones: auth runs first (no body is read for a bad key), then the limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    ring = ring if ring is not None else KeyRing(config_records([], list(admin_api_keys or [])))
    app.add_middleware(AdminAuthMiddleware, ring=ring)
    install_error_handlers(app)
    return app


class AdminSwitch:
    """ASGI: paths under /admin go to the admin app (its own keys), everything else to the OpenAI app."""

    def __init__(self, public: ASGIApp, admin: ASGIApp):
        self.public = public
        self.admin = admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        is_admin = scope["type"] == "http" and (path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"))
        await (self.admin if is_admin else self.public)(scope, receive, send)
