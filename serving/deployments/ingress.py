"""The HTTP ingress: the OpenAI API over routes kept in step with the registry, and the /admin API beside it.

The ingress is a Serve deployment (one replica, health-checked and restarted by Serve) that runs its own uvicorn
server on the configured host and port; Serve's HTTP proxy is not started, which saves a Ray hop per request (the
path and its costs: docs/serving-path.md).
"""
from __future__ import annotations

import asyncio
from functools import partial

import uvicorn
from ray import serve
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.admin.service import RegistryAdmin
from serving.api.app import build_app
from serving.api.errors import error_response
from serving.api.server import build_server_app
from serving.config import ModelConfig, ServerConfig
from serving.deployments.cluster import node_resources
from serving.deployments.handle_clients import (
    HANDLE_CLIENTS, Deadlines, HandleChatClient, HandleEmbeddingClient, MergedCalls,
)
from serving.deployments.observability import ingress_scraper, tag_serve_request
from serving.errors import TooManyConnectionsError
from serving.keys.records import config_records
from serving.keys.ring import KeyRing
from serving.logs import configure_logging
from serving.registry.routes import RegistryRoutes, served_model
from serving.registry.store import RegistryStore
from serving.router import ModelRouter
from serving.upstream.pool import UpstreamPool
from serving.secrets import read_server


def handle_client(model: ModelConfig, server: ServerConfig, check_exists: bool = True):
    """A client over the model's Serve application, its own or its colocation group's (same name for the app and
    its one deployment), with the model's deadlines (for a model that scales to zero, its cold start bounds the
    wait for a replica); every call names the model.
    check_exists=False: the application may still be on its way (a Serve config file deploys them all at once)."""
    handle = serve.get_deployment_handle(model.deployment_name, model.deployment_name, _check_exists=check_exists)
    if model.task == "embedding":
        return HandleEmbeddingClient(handle, Deadlines.of(model, server), MergedCalls.of(model), model=model.name)
    if model.task == "chat":
        return HandleChatClient(handle, Deadlines.of(model, server))
    return HANDLE_CLIENTS[model.task](handle, Deadlines.of(model, server), model=model.name)


class IngressClients:
    """How this ingress reaches a model: a Ray handle to its replicas, or for an upstream model, the remote server
    itself (no replica, no Ray hop: the gateway adds one HTTP call)."""

    def __init__(self, upstreams: UpstreamPool, server: ServerConfig):
        self.upstreams = upstreams
        self.server = server  # the default deadlines of handle calls

    def make(self, spec: ModelConfig):
        return self.upstreams.client(spec) if spec.upstream is not None else handle_client(spec, self.server)

    def drop(self, client) -> None:
        self.upstreams.drop(client)  # a handle client needs no clean-up; the pool ignores what it did not make


class ConnectionCap:
    """ASGI: a request on a connection beyond `limit` open ones gets 503 with an OpenAI error body and Retry-After,
    and its connection is closed. The check uvicorn's `limit_concurrency` makes, answered in the API's format."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit
        self.connections: set = set()  # the server's own set of open connections (http_server sets it)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(self.connections) > self.limit:
            response = error_response(TooManyConnectionsError(
                f"The server has {len(self.connections) - 1} open connections (limit {self.limit}); retry later."
            ))
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def http_server(app: ASGIApp, host: str, port: int, max_connections: int) -> uvicorn.Server:
    """uvicorn for the ingress replica, at most `max_connections` connections served: no access log (one line per
    request costs CPU on small machines), no lifespan (the app has no start-up hooks), keep-alive as uvicorn's
    default (an idle connection closes after 5 s), and no proxy headers: the client address is the socket's (/admin
    trusts loopback clients; X-Forwarded-For must not make one)."""
    capped = ConnectionCap(app, max_connections)
    server = uvicorn.Server(uvicorn.Config(capped, host=host, port=port, log_level="warning", access_log=False,
                                           lifespan="off", server_header=False, proxy_headers=False))
    capped.connections = server.server_state.connections
    return server


async def _serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as e:  # uvicorn exits when it cannot bind; that must not end the replica's event loop
        raise RuntimeError(f"uvicorn could not start (exit {e.code}); is the port taken?") from None


@serve.deployment
class Ingress:
    def __init__(self, settings: dict, secrets_path: str | None, controller=None, models: list[dict] | None = None):
        """With `controller` (`openserve up`): routes follow the registry, /admin changes it; the server's secrets
        come from the file at `secrets_path`. With `models` instead (a Serve config file, `serve deploy`): routes to
        exactly those models, no /admin and no registry, since the file is what says which models run (API keys:
        the file's `server` section, as hashes)."""
        config = read_server(settings, secrets_path) if secrets_path else ServerConfig.model_validate(settings)
        configure_logging(config.log_format)
        router = ModelRouter()
        # Serve runs the constructor on the replica's event loop; the tasks below live on it.
        loop = asyncio.get_running_loop()
        if controller is None:
            clients = partial(handle_client, server=config, check_exists=False)
            router.replace(served_model(ModelConfig.model_validate(m), clients) for m in models or [])
            keys = KeyRing(config_records(config.api_keys, config.admin_api_keys))
            app = build_app(router, max_request_bytes=config.max_request_bytes, keys=keys)
        else:
            app = self._registry_app(config, router, controller, loop)
        self._server = http_server(app, config.host, config.port, config.max_connections)
        self._serving = loop.create_task(_serve(self._server))

    def _registry_app(self, config: ServerConfig, router: ModelRouter, controller, loop):
        """Routes kept equal to the registry (polled), the registry's keys, and the /admin app over it; upstream
        models are called by this ingress directly (with their health checks running here)."""
        store = RegistryStore.open(config.resolved_registry_url)
        upstreams = UpstreamPool()
        self._health = loop.create_task(upstreams.run())

        async def notify(name: str) -> None:
            await controller.notify.remote(name)

        async def engine_stats(name: str) -> dict | None:
            client = router.own_client(name, "chat")
            if not isinstance(client, HandleChatClient):  # an upstream model: its engine is another server's
                return None
            return await client.engine_stats()

        async def replicas() -> dict:
            return await controller.replicas.remote()

        self._routes = RegistryRoutes(store, router, IngressClients(upstreams, config),
                                      interval_s=config.routes_refresh_s, replica_view=replicas)
        self._poll = loop.create_task(self._routes.run())
        nodes = node_resources if config.check_cluster_resources else None
        admin = RegistryAdmin(store, notify, refresh=self._routes.refresh, nodes=nodes, replica_view=replicas,
                              engine_stats=engine_stats)
        scraper = ingress_scraper(store) if config.metrics else None
        app, keys = build_server_app(config, store, router, admin, scraper, on_request=tag_serve_request,
                                     upstreams=upstreams)
        self._keys = loop.create_task(keys.run())
        return app

    async def check_health(self) -> None:
        """Unhealthy (Serve restarts the replica) when the HTTP server stopped, e.g. its port was taken."""
        if self._serving.done():
            error = None if self._serving.cancelled() else self._serving.exception()
            raise RuntimeError(f"the HTTP server on the ingress stopped: {error!r}")

    async def ready(self) -> bool:
        """True once the HTTP server listens (`openserve up` waits for it before saying ready)."""
        for _ in range(600):
            if self._server.started:
                return True
            if self._serving.done():
                await self.check_health()
            await asyncio.sleep(0.05)
        return self._server.started
