"""The registry controller as a Serve deployment (one replica): the only place that deploys and deletes models, and
the one that watches their replicas (what the admin API shows comes from here)."""
from __future__ import annotations

import asyncio
import logging

from ray import serve

from serving.deployments.serve_ops import RayServeOps
from serving.registry.controller import ControllerSettings, ModelController, Replicas
from serving.registry.store import RegistryStore
from serving.secrets import read_server

log = logging.getLogger("ray.serve")


@serve.deployment
class RegistryController:
    def __init__(self, settings: dict, secrets_path: str, app_name: str | None = None):
        config = read_server(settings, secrets_path)
        self.store = RegistryStore.open(config.resolved_registry_url)
        self.controller = ModelController(
            self.store, RayServeOps(config.resolved_data_dir, report_to=app_name),
            ControllerSettings.from_server(config),
        )
        # Serve runs the constructor on the replica's event loop: start converging (the server's start, or this
        # replica's restart after a crash) without waiting for a first call, and watch the replicas from then on.
        loop = asyncio.get_running_loop()
        self._first_reconcile = loop.create_task(self.reconcile())
        self._monitor = loop.create_task(self.controller.monitor())

    async def notify(self, name: str) -> None:
        """Look at the model `name` again (its entry was created, changed or deleted)."""
        self.controller.notify(name)

    async def reconcile(self) -> None:
        """Look at every model again (and remove model applications no entry owns)."""
        try:
            await self.controller.reconcile_all()
        except Exception:  # the registry or Serve is unreachable: notify() and the next start still work
            log.exception("reconciling the registry with Ray Serve failed")

    async def replicas(self) -> dict[str, Replicas]:
        """Model name -> its replicas (target, states, nodes, devices), at most a second old."""
        return await self.controller.replicas()

    async def report_placement(self, app: str, replica_id: str, placement: dict) -> None:
        """A model replica says where it runs (serving/deployments/placement.py)."""
        self.controller.report_placement(app, replica_id, placement)
