"""ModelController: makes Ray Serve match the registry, one Serve application per deployed model.

Level-triggered: `notify(name)` only says "look at this model again"; one worker per model reads the entry and
converges (deploy, redeploy, watch, or drain and delete), so requests that arrive while it works are never lost or
interleaved. Between changes, `check_replicas` watches the serving models' replicas: it logs scale changes, marks a
model failed when it lost every replica and none can be placed (its node died), and ready again when one runs. The
controller writes `status` (and `error`); the admin API writes everything else. Serve itself is behind the narrow
ServeOps interface, so the logic is tested without Ray.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

from serving.config import ModelConfig, ServerConfig, deployment_name
from serving.errors import ModelNotFoundError
from serving.registry.checks import NodeResources, resources_problem, source_problem
from serving.registry.entry import ModelEntry
from serving.registry.store import RegistryStore

# A child of Ray Serve's logger: in the controller's replica its lines reach `openserve up`'s output and Serve's logs.
log = logging.getLogger("ray.serve.openserve")

ROUTED_STATUSES = ("ready", "updating")  # the model's application serves requests (an update rolls replicas)
STARTING_STATES = ("STARTING", "UPDATING", "RECOVERING")  # Serve's ReplicaState values of a replica not yet serving


@dataclass(frozen=True)
class ReplicaInfo:
    replica_id: str
    state: str  # Serve's ReplicaState: STARTING, RUNNING, STOPPING, ...
    node_id: str | None = None
    placement: dict = field(default_factory=dict)  # what the replica reported: node, GPU ids, device


@dataclass(frozen=True)
class Replicas:
    """A model's replicas: how many Serve aims for now (the autoscaler's last decision) and each one's state."""

    target: int
    replicas: tuple[ReplicaInfo, ...] = ()

    def count(self, *states: str) -> int:
        return sum(r.state in states for r in self.replicas)

    @property
    def running(self) -> int:
        return self.count("RUNNING")

    def summary(self) -> dict:
        """The JSON the admin API shows."""
        return {
            "target": self.target, "running": self.running, "starting": self.count(*STARTING_STATES),
            "stopping": self.count("STOPPING"),
            "replicas": [{"id": r.replica_id, "state": r.state, "node_id": r.node_id, **r.placement}
                         for r in self.replicas],
        }


@dataclass(frozen=True)
class AppState:
    status: str  # Serve's ApplicationStatus: RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY, DELETING, ...
    message: str = ""
    unschedulable: bool = False  # a replica is still waiting for resources (Ray says so after 30 s)
    replicas: Replicas | None = None  # filled by ServeOps.states()


@dataclass(frozen=True)
class MemberState:
    """What a colocation group's replica says of one of its models."""

    status: str  # "loading" (not yet loaded with this spec), "ready", or "failed"
    error: str | None = None  # why it failed: "ExceptionType: message"


class ServeOps(Protocol):
    """The few Ray Serve operations the controller needs (blocking; called from threads)."""

    def run(self, spec: ModelConfig) -> None: ...  # deploy or update the model's application, without waiting
    # deploy or update a colocation group's application to serve exactly `members`, without waiting
    def run_group(self, group: str, members: list[ModelConfig]) -> None: ...
    # the group's replica's word on one member at this spec; None while there is no replica to ask
    def member_state(self, app: str, spec: ModelConfig) -> MemberState | None: ...
    def delete(self, app: str) -> None: ...  # remove an application once its replicas drained
    def state(self, app: str) -> AppState | None: ...  # None when there is no such application
    def states(self) -> dict[str, AppState]: ...  # every model application, with its replicas
    def nodes(self) -> list[NodeResources]: ...  # each alive node's total and free resources


@dataclass(frozen=True)
class ControllerSettings:
    deploy_timeout_s: float = 1800.0
    schedule_timeout_s: float = 90.0
    check_cluster_resources: bool = True
    route_grace_s: float = 2.0  # every ingress drops a route this soon after the registry changes
    poll_s: float = 0.5
    monitor_s: float = 5.0  # how often check_replicas looks at the serving models

    @classmethod
    def from_server(cls, server: ServerConfig) -> ControllerSettings:
        return cls(
            deploy_timeout_s=server.deploy_timeout_s,
            schedule_timeout_s=server.schedule_timeout_s,
            check_cluster_resources=server.check_cluster_resources,
            route_grace_s=2 * server.routes_refresh_s,
        )


def failure_reason(message: str, limit: int = 1000) -> str:
    """The exception at the end of the traceback Serve reports ("ValueError: ..." and the rest of its message,
    which may span lines), colour codes removed."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", message).splitlines() if ln.strip()]
    if not lines:
        return "the application failed (no message from Ray Serve)"
    starts = [i for i, ln in enumerate(lines) if re.match(r"[A-Za-z_][\w.]*: ", ln)]
    reason = " ".join(lines[starts[-1]:] if starts else lines[-1:])
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


class ModelController:
    def __init__(self, store: RegistryStore, ops: ServeOps, settings: ControllerSettings = ControllerSettings()):
        self.store = store
        self.ops = ops
        self.settings = settings
        self._wake: set[str] = set()
        self._workers: dict[str, asyncio.Task] = {}
        self._running: dict[str, dict] = {}  # name -> the deployment spec its application was last given
        self._lost: set[str] = set()  # models marked failed by check_replicas whose application was kept
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (target, running) last logged
        self._placements: dict[str, dict[str, dict]] = {}  # application -> replica id -> what it reported
        self._snapshot: tuple[float, dict[str, AppState]] = (float("-inf"), {})

    def notify(self, name: str) -> None:
        """Have the model's worker look at its entry again (starts the worker if it is idle)."""
        self._wake.add(name)
        worker = self._workers.get(name)
        if worker is None or worker.done():
            self._workers[name] = asyncio.get_running_loop().create_task(self._work(name))

    async def reconcile_all(self) -> None:
        """Look at every entry, and delete model applications that no entry owns (left by a crash). A row that cannot
        be read still owns its application: a damaged row must not take its running model down."""
        listing = await asyncio.to_thread(self.store.listing)
        for entry in listing.entries:
            self.notify(entry.name)
        owned = {e.spec.deployment_name for e in listing.entries} | {deployment_name(e.name) for e in listing.invalid}
        for app in await asyncio.to_thread(lambda: list(self.ops.states())):
            if app not in owned:
                log.info("deleting application %s: no registry entry owns it", app)
                await asyncio.to_thread(self.ops.delete, app)

    async def wait_idle(self) -> None:
        """Until no worker is busy (tests, and a clean shutdown)."""
        while any(not w.done() for w in self._workers.values()):
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def _work(self, name: str) -> None:
        while name in self._wake:
            self._wake.discard(name)
            try:
                await self._reconcile(name)
            except Exception as e:  # a bug or a Ray hiccup must not kill the worker silently
                log.exception("reconciling %s failed", name)
                await self._set_status(name, "failed", f"controller error: {e!r}")

    async def _reconcile(self, name: str) -> None:
        self._lost.discard(name)
        try:
            entry = await asyncio.to_thread(self.store.get, name)
        except ModelNotFoundError:
            entry = None
        if entry is not None and entry.deployed:
            await self._deploy(entry)
        else:
            await self._stop(name, entry)

    async def _deploy(self, entry: ModelEntry) -> None:
        if entry.spec.upstream is not None:
            await self._serve_upstream(entry)
            return
        app, spec = entry.spec.deployment_name, entry.spec.deployment_spec()
        started = time.monotonic()
        if self._running.get(entry.name) != spec or await asyncio.to_thread(self.ops.state, app) is None:
            problem = await self._preflight(entry.spec)
            if problem:
                await self._fail(entry, problem)
                return
            try:
                await asyncio.to_thread(self.ops.run, entry.spec)
            except Exception as e:  # Serve refused the application itself (e.g. a setting it does not accept)
                await self._fail(entry, f"Ray Serve refused the deployment: {type(e).__name__}: {e}")
                return
            self._running[entry.name] = spec
            log.info("deploying %s (version %d)", entry.name, entry.version)
        await self._watch(entry, app, started)

    async def _serve_upstream(self, entry: ModelEntry) -> None:
        """An upstream model has no Serve application (each ingress calls the remote itself): it is ready once its
        key can be read. An application left from when the model was local goes, after the routes moved on."""
        problem = await asyncio.to_thread(source_problem, entry.spec)
        if problem:
            await self._fail(entry, problem)
            return
        self._running.pop(entry.name, None)
        if await self._set_status(
            entry.name, "ready", None, version=entry.version, deployed=True
        ):
            log.info("%s is ready (upstream %s)", entry.name, entry.spec.upstream.base_url)
        if await asyncio.to_thread(self.ops.state, entry.spec.deployment_name) is not None:
            await asyncio.sleep(self.settings.route_grace_s)
            await asyncio.to_thread(self.ops.delete, entry.spec.deployment_name)

    async def _preflight(self, spec: ModelConfig) -> str | None:
        problem = await asyncio.to_thread(source_problem, spec)
        if problem is None and self.settings.check_cluster_resources:
            problem = resources_problem(spec, await asyncio.to_thread(self.ops.nodes))
        return problem

    async def _watch(self, entry: ModelEntry, app: str, started: float) -> None:
        """Poll the application until it runs, fails or times out; stop early when the entry changes again."""
        while entry.name not in self._wake:
            state = await asyncio.to_thread(self.ops.state, app)
            waited = time.monotonic() - started
            if state is None:
                await self._fail(entry, "the model's Serve application disappeared")
            elif state.status == "RUNNING":
                ready = await self._set_status(
                    entry.name, "ready", None, version=entry.version, deployed=True
                )
                if ready:
                    log.info("%s is ready", entry.name)
            elif state.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                await self._fail(entry, "the model failed to start: " + failure_reason(state.message))
            elif state.unschedulable and waited > self.settings.schedule_timeout_s:
                await self._fail(entry, f"no Ray node could take a replica within {waited:.0f} s: {state.message}")
            elif waited > self.settings.deploy_timeout_s:
                await self._fail(entry, f"not ready after {waited:.0f} s (server.deploy_timeout_s)")
            else:
                await asyncio.sleep(self.settings.poll_s)
                continue
            return

    async def _fail(self, entry: ModelEntry, reason: str) -> None:
        """Mark the entry failed (if it still is this version) and remove what is left of its application (a failed
        update takes the old version down too: the entry says failed, so nothing routes to it)."""
        log.warning("%s failed: %s", entry.name, reason)
        await self._set_status(entry.name, "failed", reason, version=entry.version)
        self._running.pop(entry.name, None)
        if await asyncio.to_thread(self.ops.state, entry.spec.deployment_name) is not None:
            await asyncio.to_thread(self.ops.delete, entry.spec.deployment_name)

    async def _stop(self, name: str, entry: ModelEntry | None) -> None:
        """Drain and delete the model's application (if any); the entry, if it still exists, becomes stopped."""
        app = deployment_name(name)
        exists = await asyncio.to_thread(self.ops.state, app) is not None
        if exists:
            await asyncio.sleep(self.settings.route_grace_s)  # let every ingress stop routing to it first
            await asyncio.to_thread(self.ops.delete, app)  # Serve lets in-flight requests finish
            log.info("%s undeployed", name)
        self._running.pop(name, None)
        if entry is not None and (exists or entry.status not in ("registered", "stopped")):
            await self._set_status(name, "stopped", None, deployed=False)

    async def _set_status(self, name: str, status: str, error: str | None, **kw) -> bool:
        """Record a status change; the replica snapshot is dropped with it, so whoever reads the model as ready next
        also reads the replicas Serve has now (not a look taken while it was still deploying)."""
        changed = await asyncio.to_thread(self.store.set_status, name, status, error, **kw)
        self._snapshot = (float("-inf"), {})
        return changed

    # --- between changes: the serving models' replicas ---------------------------------------------------------

    def report_placement(self, app: str, replica_id: str, placement: dict) -> None:
        """A replica says where it runs (node, GPU ids, device); shown with its replica until it goes away."""
        self._placements.setdefault(app, {})[replica_id] = dict(placement)

    async def replicas(self, max_age_s: float = 1.0) -> dict[str, Replicas]:
        """Model name -> its replicas, from a look at Serve at most `max_age_s` old."""
        taken, states = self._snapshot
        if time.monotonic() - taken > max_age_s:
            states = await self._look()
        names = {deployment_name(n): n for n in await asyncio.to_thread(lambda: [e.name for e in self.store.list()])}
        return {names[app]: state.replicas for app, state in states.items() if app in names and state.replicas}

    async def _look(self) -> dict[str, AppState]:
        states = await asyncio.to_thread(self.ops.states)
        for app in list(self._placements):
            if app not in states:
                del self._placements[app]
        merged = {app: self._with_placements(app, state) for app, state in states.items()}
        self._snapshot = (time.monotonic(), merged)
        return merged

    def _with_placements(self, app: str, state: AppState) -> AppState:
        reported = self._placements.get(app, {})
        if state.replicas is None:
            return state
        alive = {r.replica_id for r in state.replicas.replicas}
        for gone in set(reported) - alive:
            del reported[gone]
        replicas = tuple(replace(r, placement=reported.get(r.replica_id, {})) for r in state.replicas.replicas)
        return replace(state, replicas=replace(state.replicas, replicas=replicas))

    async def monitor(self) -> None:
        """Forever (a task of the controller's replica): check_replicas every settings.monitor_s."""
        while True:
            try:
                await self.check_replicas()
            except Exception:  # Serve or the registry hiccuped: look again next time
                log.exception("checking the models' replicas failed")
            await asyncio.sleep(self.settings.monitor_s)

    async def check_replicas(self) -> None:
        """One look at every deployed model no worker is busy with: log scale changes; mark a model that lost every
        replica with none placeable `failed` (its application stays, so Serve places one when a node can take it),
        and `ready` again once one runs; redeploy a model whose application vanished."""
        states = await self._look()
        nodes: list[NodeResources] | None = None
        for entry in await asyncio.to_thread(self.store.list):
            worker = self._workers.get(entry.name)
            if not entry.deployed or (worker is not None and not worker.done()):
                continue
            state = states.get(entry.spec.deployment_name)
            if state is None:
                if entry.status in ROUTED_STATUSES:
                    log.warning("%s: its Serve application vanished; deploying it again", entry.name)
                    self.notify(entry.name)
                continue
            self._log_scaling(entry.name, state.replicas)
            if entry.status in ROUTED_STATUSES:
                nodes = nodes if nodes is not None else await asyncio.to_thread(self.ops.nodes)
                problem = self._lost_reason(entry.spec, state, nodes)
                if problem:
                    log.warning("%s failed: %s", entry.name, problem)
                    self._lost.add(entry.name)
                    await self._set_status(entry.name, "failed", problem, version=entry.version)
            elif entry.name in self._lost and state.status == "RUNNING" and state.replicas and state.replicas.running:
                if await self._set_status(entry.name, "ready", None, version=entry.version):
                    log.info("%s is ready again: %d replica(s) running", entry.name, state.replicas.running)
                self._lost.discard(entry.name)

    @staticmethod
    def _lost_reason(spec: ModelConfig, state: AppState, nodes: list[NodeResources]) -> str | None:
        """Why a serving model has no replica and cannot get one now, or None (it has one, or one is coming)."""
        replicas = state.replicas
        if replicas is None or replicas.running > 0 or replicas.target == 0:
            return None
        hopeless = resources_problem(spec, nodes)
        if hopeless:
            return f"no running replica, and no alive Ray node can hold one: {hopeless}"
        if state.unschedulable and spec.initial_replicas > 0:  # at zero, a cold start has its own bound
            return f"no running replica, and none could be placed: {state.message}"
        if state.status == "DEPLOY_FAILED":  # Serve gave up; UNHEALTHY is a replica being replaced, left to Serve
            return "no running replica: " + failure_reason(state.message)
        return None

    def _log_scaling(self, name: str, replicas: Replicas | None) -> None:
        if replicas is None:
            return
        now, before = (replicas.target, replicas.running), self._seen.get(name)
        if now != before:
            self._seen[name] = now
            log.info("%s: %d replica(s) running, target %d (was %s)", name, now[1], now[0],
                     "unknown" if before is None else f"{before[1]} running, target {before[0]}")
