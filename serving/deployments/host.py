"""A colocation group's replica: one process serving several embedding, image and speech models (`colocate`), so
that they share one Python, one torch and one set of imported libraries (docs/scaling.md, "Colocation").

Membership arrives as the deployment's user_config, {"members": [deployment specs]}: Serve calls `reconfigure` on
the live replica (no restart), which returns at once; new and changed members are then loaded one at a time in a
worker thread while the others keep serving, and a member's load failure is that member's alone.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable

from ray import serve

from models.images.types import ImageParams
from models.speech.types import SpeechParams
from serving.clients import EmbeddingResult, EncodedAudio
from serving.config import ModelConfig
from serving.deployments.common import ItemError, ServedModel, load_backend, set_compute_threads, tune_for_compute
from serving.deployments.embedding import EmbeddingModel
from serving.deployments.image import ImageModel
from serving.deployments.observability import group_replica
from serving.deployments.placement import place_replica
from serving.deployments.speech import SpeechModel
from serving.errors import ModelNotFoundError, ModelUnavailableError

log = logging.getLogger("serving.deployments")

MEMBER_CLASSES: dict[str, Callable[..., ServedModel]] = {
    "embedding": EmbeddingModel, "image": ImageModel, "speech": SpeechModel,
}


def spec_key(spec: dict) -> str:
    """A member spec's identity, the same on both sides of Ray (a user_config travels as JSON-like data)."""
    return json.dumps(spec, sort_keys=True, default=str)


def compute_threads(specs: list[dict]) -> int:
    """Threads for the shared process: the largest of the members' torch_threads, or every core this process may
    use when a member does not set one (as its own replica would)."""
    wanted = [spec.get("torch_threads") for spec in specs]
    if not wanted or None in wanted:
        return len(os.sched_getaffinity(0)) or 1
    return max(wanted)


def own_device(spec: dict) -> dict:
    """The member's spec with `auto` resolved as its own replica would: a member that reserved no GPU computes on
    the CPU, even where the group's replica holds a GPU (reserved by another member)."""
    if spec.get("device", "auto") == "auto" and not spec.get("resources", {}).get("num_gpus"):
        return {**spec, "device": "cpu"}
    return spec


@dataclass
class Member:
    spec: dict  # the spec wanted now
    key: str  # spec_key(spec)
    status: str = "loading"  # of `spec`: loading, ready or failed
    error: str | None = None  # why it failed: "ExceptionType: message"
    served: ServedModel | None = None  # what answers now: the previous spec's while a changed one loads


class Members:
    """The models one process serves, converging in the background to the list it was last given (`want`).
    `load(spec)` -> (ModelConfig, backend) runs in a worker thread, one load at a time."""

    def __init__(self, load: Callable[[dict], tuple]):
        self._load = load
        self._members: dict[str, Member] = {}
        self._loader: asyncio.Task | None = None

    def want(self, specs: list[dict]) -> None:
        """Serve exactly `specs` from now on (call on the event loop): a removed member is dropped at once, a new
        or changed one is loaded in the background; a changed one answers with its previous spec until then."""
        wanted = {spec["name"]: spec for spec in specs}
        for name in set(self._members) - set(wanted):
            self._drop(name)
        for name, spec in wanted.items():
            member, key = self._members.get(name), spec_key(spec)
            if member is None or member.key != key:
                self._members[name] = Member(spec, key, served=member.served if member else None)
        if self._loader is None or self._loader.done():
            self._loader = asyncio.get_running_loop().create_task(self._load_pending())

    def states(self) -> dict[str, dict]:
        """Member name -> {status, error, key}: what the registry controller reads (RayServeOps.member_state)."""
        return {name: {"status": m.status, "error": m.error, "key": m.key} for name, m in self._members.items()}

    async def idle(self) -> None:
        """Until no load is pending (tests)."""
        while self._loader is not None and not self._loader.done():
            await asyncio.shield(self._loader)

    def served(self, name: str, task: str) -> ServedModel:
        """The loaded `task` model `name`; ModelNotFoundError when this process does not hold it (as that task), and
        ModelUnavailableError (503) while it loads or after its load failed."""
        member = self._members.get(name)
        if member is None or member.spec["task"] != task:
            raise ModelNotFoundError(f"The model `{name}` is not served by this replica as a(n) {task} model.")
        if member.served is not None and member.served.model.task == task:
            return member.served
        if member.status == "failed":
            raise ModelUnavailableError(f"The model `{name}` failed to load: {member.error}",
                                        code="model_load_failed")
        raise ModelUnavailableError(f"The model `{name}` is loading; retry later.", code="model_loading")

    async def _load_pending(self) -> None:
        """Load the members waiting for it, one after the other, until none waits."""
        while (member := next((m for m in self._members.values() if m.status == "loading"), None)) is not None:
            served, error = None, None
            try:
                model, backend = await asyncio.to_thread(self._load, member.spec)
                served = MEMBER_CLASSES[model.task](model, backend)
            except Exception as e:  # noqa: BLE001 - one member's failure; the replica serves the others
                error = f"{type(e).__name__}: {e}"
            name = member.spec["name"]
            if self._members.get(name) is not member:  # removed or changed while loading: what loaded is stale
                if served is not None:
                    served.close()
                continue
            self._settle(member, served, error)
            set_compute_threads(compute_threads([m.spec for m in self._members.values()]))

    @staticmethod
    def _settle(member: Member, served: ServedModel | None, error: str | None) -> None:
        """The member's load ended: it answers with the new model, or (failed) not at all, not with its old spec."""
        previous, member.served = member.served, served
        if previous is not None:
            previous.close()
        if error is None:
            member.status = "ready"
            log.info("member %s ready", member.spec["name"])
        else:
            member.status, member.error = "failed", error
            log.error("member %s failed to load: %s", member.spec["name"], error)

    def _drop(self, name: str) -> None:
        member = self._members.pop(name)
        if member.served is not None:
            member.served.close()
        member.served = None
        gc.collect()  # a backend's modules hold reference cycles: free its memory now, not at some later pass
        log.info("member %s dropped", name)


@serve.deployment
class ModelHost:
    """The replica of colocation group `group`: the members its user_config lists, each answering by name."""

    def __init__(self, group: str, data_dir: str, report_to: str | None = None):
        self.group = group
        # Here, on the thread that runs the replica's event loop: Linux niceness is per thread, and the threads that
        # load and run the members (and their OpenMP pools) are made later from this one and inherit it; lowered
        # only inside a load's worker thread, most of them would compute at Ray's nice 15.
        tune_for_compute()
        group_replica(group)
        self.members = Members(lambda spec: load_backend(place_replica(own_device(spec), report_to), data_dir))

    async def reconfigure(self, config: dict) -> None:
        """Serve's lightweight update (and the start): {"members": [specs]}; returns before anything loads."""
        self.members.want(list(config.get("members", [])))

    async def member_states(self) -> dict[str, dict]:
        return self.members.states()

    async def embed_many(self, calls: list, model: str) -> list[EmbeddingResult | ItemError]:
        return await self.members.served(model, "embedding").embed_many(calls)

    async def generate(self, prompt: str, params: ImageParams, n: int, model: str) -> list[bytes]:
        return await self.members.served(model, "image").generate(prompt, params, n)

    async def synthesize(self, text: str, params: SpeechParams, response_format: str, model: str) -> EncodedAudio:
        return await self.members.served(model, "speech").synthesize(text, params, response_format)


def member_config(members: list[ModelConfig]) -> dict:
    """The user_config that makes a ModelHost serve exactly `members`."""
    return {"members": [json.loads(json.dumps(m.deployment_spec())) for m in sorted(members, key=lambda m: m.name)]}
