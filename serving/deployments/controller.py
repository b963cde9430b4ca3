"""The registry controller as a Serve deployment (one replica): the only place that deploys and deletes models."""
from __future__ import annotations

import asyncio
import logging

from ray import serve

from serving.deployments.serve_ops import RayServeOps
from serving.registry.controller import ControllerSettings, ModelController
from serving.registry.store import RegistryStore
from serving.secrets import read_server

log = logging.getLogger("ray.serve")


@serve.deployment
class RegistryController:
    def __init__(self, settings: dict, secrets_path: str):
        config = read_server(settings, secrets_path)
        self.store = RegistryStore.open(config.resolved_registry_url)
        self.controller = ModelController(
            self.store, RayServeOps(config.resolved_data_dir), ControllerSettings.from_server(config)
        )
        # Serve runs the constructor on the replica's event loop: start converging (the server's start, or this
        # replica's restart after a crash) without waiting for a first call.
        self._first_reconcile = asyncio.get_running_loop().create_task(self.reconcile())

    async def notify(self, name: str) -> None:
        """Look at the model `name` again (its entry was created, changed or deleted)."""
        self.controller.notify(name)

    async def reconcile(self) -> None:
        """Look at every model again (and remove model applications no entry owns)."""
        try:
            await self.controller.reconcile_all()
        except Exception:  # the registry or Serve is unreachable: notify() and the next start still work
            log.exception("reconciling the registry with Ray Serve failed")
