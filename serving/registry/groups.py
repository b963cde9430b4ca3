"""Colocation groups: the models with the same `colocate` share one Serve application, whose replica loads and
unloads them in place. The controller's side: which models a group's application serves, told to Serve only when
that changes, one change at a time per group."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from serving.config import ModelConfig, group_app_name
from serving.registry.store import RegistryStore

if TYPE_CHECKING:  # the controller module imports this one
    from serving.registry.controller import ServeOps

log = logging.getLogger("ray.serve.openserve")


class Groups:
    def __init__(self, store: RegistryStore, ops: ServeOps, lost: set[str]):
        self.store = store
        self.ops = ops
        self._lost = lost  # the controller's: models failed only because their replica is gone (still members)
        self._locks: dict[str, asyncio.Lock] = {}
        self._given: dict[str, list[dict]] = {}  # group -> the member specs its application was last given

    def members(self, group: str, include: ModelConfig | None = None) -> list[ModelConfig]:
        """The group's models to serve, by name: every deployed entry of the group not failed to load (one whose
        replica was lost stays: its group brings it back), and `include` (the model being deployed now, whatever
        its status says). Blocking: the registry."""
        members = {
            e.name: e.spec for e in self.store.list()
            if e.deployed and e.spec.colocate == group and (e.status != "failed" or e.name in self._lost)
        }
        if include is not None:
            members[include.name] = include
        return [members[name] for name in sorted(members)]

    async def converge(self, group: str, include: ModelConfig | None = None) -> None:
        """Make the group's application serve members(group, include): deploy or update it when that changed (or it
        is gone), delete it when no member is left. Raises what Serve raises."""
        async with self._locks.setdefault(group, asyncio.Lock()):
            members = await asyncio.to_thread(self.members, group, include)
            app = group_app_name(group)
            exists = await asyncio.to_thread(self.ops.state, app) is not None
            if not members:
                self._given.pop(group, None)
                if exists:
                    await asyncio.to_thread(self.ops.delete, app)
                    log.info("group %s has no model left: its application is deleted", group)
                return
            specs = [m.deployment_spec() for m in members]
            if exists and self._given.get(group) == specs:
                return
            await asyncio.to_thread(self.ops.run_group, group, members)
            self._given[group] = specs
            log.info("group %s serves %s", group, ", ".join(m.name for m in members))

    def forget(self, group: str) -> None:
        """The next converge() tells Serve again (its application failed or was replaced)."""
        self._given.pop(group, None)
