"""The HTTP ingress: the OpenAI API over routes kept in step with the registry, and the /admin API beside it."""
from __future__ import annotations

import asyncio

from ray import serve

from serving.admin.app import AdminSwitch, build_admin_app
from serving.admin.service import RegistryAdmin
from serving.api.app import build_app
from serving.config import ModelConfig, ServerConfig
from serving.deployments.handle_clients import HANDLE_CLIENTS
from serving.registry.routes import RegistryRoutes
from serving.registry.store import RegistryStore
from serving.router import ModelRouter


def handle_client(model: ModelConfig):
    """A client over the model's own Serve application (same name for the app and its one deployment)."""
    handle = serve.get_deployment_handle(model.deployment_name, model.deployment_name)
    return HANDLE_CLIENTS[model.task](handle)


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, server: dict, controller):
        config = ServerConfig.model_validate(server)
        store = RegistryStore.open(config.resolved_registry_url)
        router = ModelRouter()
        self._routes = RegistryRoutes(store, router, handle_client, interval_s=config.routes_refresh_s)
        # Serve runs the constructor on the replica's event loop; the task keeps the routes in step.
        self._poll = asyncio.get_running_loop().create_task(self._routes.run())

        async def notify(name: str) -> None:
            await controller.notify.remote(name)

        admin = RegistryAdmin(store, notify, refresh=self._routes.refresh)
        public = build_app(router, max_request_bytes=config.max_request_bytes, api_keys=config.api_keys)
        admin_app = build_admin_app(
            admin, admin_api_keys=config.admin_api_keys, max_request_bytes=config.max_request_bytes
        )
        self._app = AdminSwitch(public, admin_app)

    def __serve_build_asgi_app__(self):
        return self._app
