"""The HTTP ingress: the OpenAI API over routes kept in step with the registry, and the /admin API beside it.

The ingress is a Serve deployment (one replica, health-checked and restarted by Serve) that runs its own uvicorn
server on the configured host and port; Serve's HTTP proxy is not started. Through the proxy every request took
two Ray hops before reaching a model (proxy -> ingress replica as ASGI messages over Ray, then ingress -> model);
now it takes one (ingress -> model handle). Measured on 2 cores with a no-op model (python -m benchmarks overhead):
see the README's "Serving overhead" figures.
"""
from __future__ import annotations

import asyncio

import uvicorn
from ray import serve

from serving.admin.service import RegistryAdmin
from serving.api.app import build_app
from serving.api.server import build_server_app
from serving.config import ModelConfig, ServerConfig
from serving.deployments.cluster import node_resources
from serving.deployments.handle_clients import HANDLE_CLIENTS
from serving.deployments.observability import ingress_scraper, tag_serve_request
from serving.keys.records import config_records
from serving.keys.ring import KeyRing
from serving.logs import configure_logging
from serving.registry.routes import RegistryRoutes, served_model
from serving.registry.store import RegistryStore
from serving.router import ModelRouter


def handle_client(model: ModelConfig, check_exists: bool = True):
    """A client over the model's own Serve application (same name for the app and its one deployment); a model
    that scales to zero bounds how long a call waits for a replica (its cold start). check_exists=False: the
    application may still be on its way (a Serve config file deploys every application at once)."""
    handle = serve.get_deployment_handle(model.deployment_name, model.deployment_name, _check_exists=check_exists)
    return HANDLE_CLIENTS[model.task](handle, model.cold_start_timeout_s)


def config_file_client(model: ModelConfig):
    return handle_client(model, check_exists=False)


def http_server(app, host: str, port: int) -> uvicorn.Server:
    """uvicorn for the ingress replica: no access log (one line per request costs CPU on small machines), no
    lifespan (the app has no start-up hooks), keep-alive as uvicorn's default, and no proxy headers: the client
    address is the socket's (/admin trusts loopback clients; X-Forwarded-For must not make one)."""
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                         lifespan="off", server_header=False, proxy_headers=False))


async def _serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as e:  # uvicorn exits when it cannot bind; that must not end the replica's event loop
        raise RuntimeError(f"uvicorn could not start (exit {e.code}); is the port taken?") from None


@serve.deployment
class Ingress:
    def __init__(self, server: dict, controller=None, models: list[dict] | None = None):
        """With `controller` (`openserve up`): routes follow the registry, /admin changes it. With `models` instead
        (a Serve config file, `serve deploy`): routes to exactly those models, no /admin and no registry, since the
        file is what says which models run (API keys: the file's `server` section, as hashes)."""
        config = ServerConfig.model_validate(server)
        configure_logging(config.log_format)
        router = ModelRouter()
        # Serve runs the constructor on the replica's event loop; the tasks below live on it.
        loop = asyncio.get_running_loop()
        if controller is None:
            router.replace(served_model(ModelConfig.model_validate(m), config_file_client) for m in models or [])
            keys = KeyRing(config_records(config.api_keys, config.admin_api_keys))
            app = build_app(router, max_request_bytes=config.max_request_bytes, keys=keys)
        else:
            app = self._registry_app(config, router, controller, loop)
        self._server = http_server(app, config.host, config.port)
        self._serving = loop.create_task(_serve(self._server))

    def _registry_app(self, config: ServerConfig, router: ModelRouter, controller, loop):
        """Routes kept equal to the registry (polled), the registry's keys, and the /admin app over it."""
        store = RegistryStore.open(config.resolved_registry_url)

        async def notify(name: str) -> None:
            await controller.notify.remote(name)

        async def replicas() -> dict:
            return await controller.replicas.remote()

        self._routes = RegistryRoutes(store, router, handle_client, interval_s=config.routes_refresh_s,
                                      replica_view=replicas)
        self._poll = loop.create_task(self._routes.run())
        nodes = node_resources if config.check_cluster_resources else None
        admin = RegistryAdmin(store, notify, refresh=self._routes.refresh, nodes=nodes, replica_view=replicas)
        scraper = ingress_scraper(store) if config.metrics else None
        app, keys = build_server_app(config, store, router, admin, scraper, on_request=tag_serve_request)
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
