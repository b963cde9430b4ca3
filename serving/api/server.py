"""build_server_app: everything the ingress serves on its port, wired together.

    RequestMiddleware (request id, metrics, access log)
      -> AdminSwitch -> /admin/*: admin app (admin keys or loopback; /admin/models, /admin/keys, /admin/upstreams)
                     -> the rest: OpenAI app (API keys and limits, body limit, /v1/*, the Ollama API's /api/*,
                        /health, /ready, /metrics)
"""
from __future__ import annotations

from typing import Callable

from starlette.types import ASGIApp

from serving.admin.app import AdminSwitch, build_admin_app
from serving.admin.keys import KeyAdmin
from serving.admin.service import RegistryAdmin
from serving.api.app import build_app
from serving.api.middleware import RequestMiddleware
from serving.api.ops import RegistryReadiness
from serving.config import ServerConfig
from serving.keys.records import config_records
from serving.keys.ring import KeyRing
from serving.keys.store import KeyStore
from serving.logs import AccessLog
from serving.metrics.scrape import Scraper
from serving.registry.store import RegistryStore
from serving.router import ModelRouter
from serving.upstream.pool import UpstreamPool


def build_server_app(config: ServerConfig, store: RegistryStore, router: ModelRouter, admin: RegistryAdmin,
                     scraper: Scraper | None = None, on_request: Callable[[str], None] | None = None,
                     upstreams: UpstreamPool | None = None) -> tuple[ASGIApp, KeyRing]:
    """The ASGI app and its key ring (whose `run()` the caller schedules, to follow the registry's keys).
    `on_request(request_id)` runs in each request's context before anything else; `upstreams` is what
    /admin/upstreams shows."""
    keys = KeyStore(store.engine)
    ring = KeyRing(config_records(config.api_keys, config.admin_api_keys), keys, config.keys_refresh_s)
    public = build_app(router, max_request_bytes=config.max_request_bytes, keys=ring,
                       readiness=RegistryReadiness(store, router), scraper=scraper if config.metrics else None)
    admin_app = build_admin_app(admin, max_request_bytes=config.max_request_bytes, ring=ring,
                                key_admin=KeyAdmin(keys, ring), upstreams=upstreams)
    access_log = AccessLog(config.log_format) if config.access_log else None
    app = RequestMiddleware(AdminSwitch(public, admin_app), access_log=access_log, metrics_enabled=config.metrics,
                            on_request=on_request)
    return app, ring
