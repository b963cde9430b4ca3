"""RegistryAdmin: what each admin route does: validate, write the registry, wake the controller, update routes.

The registry write is the commit point: once it returns, the change survives a crash, and the controller (told
here, and again on every start) converges Ray Serve to it.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from pydantic import ValidationError

from serving.admin.schemas import ModelUpdate
from serving.config import ModelConfig
from serving.errors import ConflictError, InvalidRequestError, RegistryUnavailableError
from serving.registry.checks import NodeResources, capacity_problem, resources_problem, source_problem
from serving.registry.controller import ROUTED_STATUSES, Replicas
from serving.registry.entry import ModelEntry
from serving.registry.store import RegistryListing, RegistryStore

log = logging.getLogger("serving.admin")

Notify = Callable[[str], Awaitable[None]]  # tell the controller to look at a model again
EngineStats = Callable[[str], Awaitable["dict | None"]]  # a served chat model's engine stats, by name
Nodes = Callable[[], list[NodeResources]]  # the cluster's nodes (blocking; None: no resource checks)
ReplicaView = Callable[[], Awaitable[dict[str, Replicas]]]  # model name -> its replicas, from the controller


def invalid_config(error: ValidationError) -> InvalidRequestError:
    """A 400 naming the first bad field of a configuration built from a PATCH."""
    first = error.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    return InvalidRequestError(f"{param}: {message}" if param else message, param=param)


class RegistryAdmin:
    def __init__(self, store: RegistryStore, notify: Notify, refresh: Callable[[], Awaitable[None]] | None = None,
                 check_source: Callable[[ModelConfig], str | None] = source_problem, nodes: Nodes | None = None,
                 replica_view: ReplicaView | None = None, engine_stats: EngineStats | None = None):
        self.store = store
        self.notify = notify
        self.refresh = refresh  # reload this ingress' routes now rather than at its next poll
        self.check_source = check_source
        self.engine_stats = engine_stats  # None: this server has no route to its models' replicas
        self.nodes = nodes
        self.replica_view = replica_view

    async def engine(self, name: str) -> dict | None:
        """A registered chat model's engine stats from one of its replicas (its path: batched, device, CUDA graphs);
        404 for an unknown or undeployed model, 400 for another task, None when its engine reports no stats."""
        await self.get(name)
        if self.engine_stats is None:
            return None
        return await self.engine_stats(name)

    async def replicas(self) -> dict[str, Replicas]:
        """Model name -> its replicas as the controller last saw them ({} when it cannot say)."""
        if self.replica_view is None:
            return {}
        try:
            return await self.replica_view()
        except Exception as e:  # the controller is restarting: the registry part of the answer still stands
            log.warning("replica states unavailable: %r", e)
            return {}

    async def list(self) -> RegistryListing:
        """Every entry, and the rows that cannot be read (reported, not fatal)."""
        return await asyncio.to_thread(self.store.listing)

    async def get(self, name: str) -> ModelEntry:
        entry = await asyncio.to_thread(self.store.get, name)
        await self._sync_routes()  # whoever sees `ready` here can use the model through this ingress at once
        return entry

    async def register(self, spec: ModelConfig, deploy: bool, actor: str) -> ModelEntry:
        await self._check_source(spec)
        if deploy:
            await self._check_room(spec)
        entry = await asyncio.to_thread(self.store.create, spec, deployed=deploy, actor=actor)
        log.info("registry: %s registered by %s", spec.name, actor)
        if deploy:
            await self.notify(spec.name)
        return entry

    async def update(self, name: str, changes: ModelUpdate, actor: str) -> ModelEntry:
        """Apply `changes`; a deployed model whose deployment changed is redeployed (others just re-routed)."""
        current = await asyncio.to_thread(self.store.get, name)
        try:
            spec = ModelConfig.model_validate(changes.apply(current.spec))
        except ValidationError as e:
            raise invalid_config(e) from None
        if (spec.source, spec.revision, spec.upstream) != (current.spec.source, current.spec.revision,
                                                             current.spec.upstream):
            await self._check_source(spec)
        status = None
        if current.deployed and spec.deployment_spec() != current.spec.deployment_spec():
            status = "updating" if current.status in ROUTED_STATUSES else "deploying"
            await self._check_room(spec, released=current.spec if status == "updating" else None)
        entry = await asyncio.to_thread(self.store.update, spec, actor=actor, status=status)
        log.info("registry: %s updated to version %d by %s", name, entry.version, actor)
        await self._sync_routes()
        if entry.deployed:
            await self.notify(name)
        return entry

    async def deploy(self, name: str, actor: str) -> ModelEntry:
        current = await asyncio.to_thread(self.store.get, name)
        if current.status not in ROUTED_STATUSES:
            await self._check_room(current.spec)
        entry = await asyncio.to_thread(self.store.set_deployed, name, True, actor=actor)
        log.info("registry: %s deploy requested by %s", name, actor)
        await self.notify(name)
        return entry

    async def undeploy(self, name: str, actor: str) -> ModelEntry:
        """Stop routing to the model now; the controller drains its in-flight requests, then deletes it."""
        entry = await asyncio.to_thread(self.store.set_deployed, name, False, actor=actor)
        log.info("registry: %s undeploy requested by %s", name, actor)
        await self._sync_routes()
        await self.notify(name)
        return entry

    async def delete(self, name: str, actor: str) -> str:
        """Delete the entry (even one whose row cannot be read); returns its name."""
        await asyncio.to_thread(self.store.delete, name)
        log.info("registry: %s deleted by %s", name, actor)
        await self._sync_routes()
        await self.notify(name)
        return name

    async def _check_source(self, spec: ModelConfig) -> None:
        problem = await asyncio.to_thread(self.check_source, spec)
        if problem:
            raise InvalidRequestError(f"source: {problem}", param="source", code="invalid_source")

    async def _check_room(self, spec: ModelConfig, released: ModelConfig | None = None) -> None:
        """Refuse at once a deploy no node could ever hold (400), or one whose replicas do not fit what is free
        now (409), with what was asked and what is there. `released`: what the model holds today (an update)."""
        if self.nodes is None:
            return
        nodes = await asyncio.to_thread(self.nodes)
        hopeless = resources_problem(spec, nodes)
        if hopeless:
            raise InvalidRequestError(f"resources: {hopeless}", param="resources", code="insufficient_resources")
        short = capacity_problem(spec, nodes, released)
        if short:
            raise ConflictError(f"resources: {short}", param="resources", code="insufficient_resources")

    async def _sync_routes(self) -> None:
        """Reload this ingress' routes now; if the registry cannot be read just now, its next poll will."""
        if self.refresh is not None:
            try:
                await self.refresh()
            except RegistryUnavailableError as e:  # the change itself is committed: do not report it as failed
                log.warning("routes not reloaded after an admin change: %s", e)
