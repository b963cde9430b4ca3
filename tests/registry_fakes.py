"""An in-memory Ray Serve (ServeOps) and the admin stack wired in-process over it: registry tests without Ray."""
from __future__ import annotations

from dataclasses import dataclass, field

from serving.admin.app import AdminSwitch, build_admin_app
from serving.admin.service import RegistryAdmin
from serving.api.app import build_app
from serving.config import ModelConfig
from serving.registry.checks import NodeResources
from serving.registry.controller import (
    AppState, ControllerSettings, MemberState, ModelController, ReplicaInfo, Replicas,
)
from serving.registry.routes import RegistryRoutes
from serving.registry.store import RegistryStore
from serving.router import ModelRouter
from serving.upstream.pool import UpstreamPool
from tests.api_fakes import FakeChatClient, FakeEmbeddingClient, FakeImageClient, FakeSpeechClient

def embedding(name: str, **kw) -> ModelConfig:
    """A fake embedding model's configuration with `kw` on top."""
    return ModelConfig.model_validate({"name": name, "task": "embedding", "source": "fake:", **kw})


FAST = ControllerSettings(deploy_timeout_s=5, schedule_timeout_s=0.2, route_grace_s=0, poll_s=0.01, monitor_s=0.01)


def node(cpus: float = 2.0, free: float | None = None, **other: float) -> NodeResources:
    """A node with `cpus` CPUs (`free` of them unreserved; default all) and other resources, all free."""
    total = {"CPU": cpus, "memory": 1e9, **other}
    return NodeResources(total=total, free={**total, "CPU": cpus if free is None else free})


def replicas(target: int, running: int, starting: int = 0) -> Replicas:
    states = ["RUNNING"] * running + ["STARTING"] * starting
    return Replicas(target, tuple(ReplicaInfo(f"r{i}", state, "node-1") for i, state in enumerate(states)))


@dataclass
class FakeServeOps:
    """Applications that are RUNNING as soon as they run (one running replica per wanted one), unless
    `outcomes[model name]` says otherwise."""

    nodes_: list[NodeResources] = field(default_factory=lambda: [node()])
    outcomes: dict[str, AppState] = field(default_factory=dict)
    running: dict[str, AppState] = field(default_factory=dict)
    runs: list[tuple[str, int]] = field(default_factory=list)  # (model, max_batch_size) per run
    deleted: list[str] = field(default_factory=list)
    group_runs: list[tuple[str, list[str]]] = field(default_factory=list)  # (group, member names) per run_group
    members: dict[str, dict[str, dict]] = field(default_factory=dict)  # group app -> member -> spec it loaded
    member_outcomes: dict[str, MemberState] = field(default_factory=dict)  # by model name; default ready

    def run(self, spec: ModelConfig) -> None:
        self.runs.append((spec.name, spec.batching.max_batch_size))
        wanted = spec.initial_replicas
        state = AppState("RUNNING", replicas=replicas(wanted, wanted))
        self.running[spec.deployment_name] = self.outcomes.get(spec.name, state)

    def run_group(self, group: str, members: list[ModelConfig]) -> None:
        self.group_runs.append((group, [m.name for m in members]))
        app = members[0].deployment_name
        self.members[app] = {m.name: m.deployment_spec() for m in members}
        self.running[app] = self.outcomes.get(app, AppState("RUNNING", replicas=replicas(1, 1)))

    def member_state(self, app: str, spec: ModelConfig) -> MemberState | None:
        if app not in self.running:
            return None
        if self.members.get(app, {}).get(spec.name) != spec.deployment_spec():
            return MemberState("loading")
        return self.member_outcomes.get(spec.name, MemberState("ready"))

    def delete(self, app: str) -> None:
        self.running.pop(app, None)
        self.members.pop(app, None)
        self.deleted.append(app)

    def state(self, app: str) -> AppState | None:
        return self.running.get(app)

    def states(self) -> dict[str, AppState]:
        return dict(self.running)

    def nodes(self) -> list[NodeResources]:
        return self.nodes_


async def settle(controller: ModelController, *names: str) -> None:
    """Have the controller look at these models and wait until it is idle again."""
    for name in names:
        controller.notify(name)
    await controller.wait_idle()


FAKE_CLIENTS = {"chat": FakeChatClient, "embedding": FakeEmbeddingClient, "image": FakeImageClient,
                "speech": FakeSpeechClient}


@dataclass
class FakeClients:
    """The ingress' client factory with fakes in place of Ray handles; upstream models get the real pool's."""

    upstreams: UpstreamPool = field(default_factory=UpstreamPool)
    dropped: list = field(default_factory=list)

    def make(self, spec: ModelConfig):
        return self.upstreams.client(spec) if spec.upstream else FAKE_CLIENTS[spec.task]()

    def drop(self, client) -> None:
        self.dropped.append(client)
        self.upstreams.drop(client)


@dataclass
class AdminStack:
    """The ingress' two apps over a real SQLite registry, with the real controller on FakeServeOps."""

    store: RegistryStore
    ops: FakeServeOps
    controller: ModelController
    routes: RegistryRoutes
    app: AdminSwitch
    clients: FakeClients


def admin_stack(db_path: str, admin_api_keys: list[str] = (), api_keys: list[str] = (),
                registry_timeout_s: float = 5.0) -> AdminStack:
    store = RegistryStore.open(f"sqlite:///{db_path}", timeout_s=registry_timeout_s)
    ops = FakeServeOps()
    controller = ModelController(store, ops, FAST)
    router = ModelRouter()
    clients = FakeClients()

    async def replica_view() -> dict:
        return await controller.replicas(max_age_s=0)  # tests change the fake Serve and look at once

    routes = RegistryRoutes(store, router, clients, interval_s=0.05, replica_view=replica_view, states_every_s=0)

    async def notify(name: str) -> None:
        controller.notify(name)

    admin = RegistryAdmin(store, notify, refresh=routes.refresh, nodes=ops.nodes, replica_view=replica_view,
                          engine_stats=lambda name: router.own_client(name, "chat").engine_stats())
    public = build_app(router, api_keys=list(api_keys))
    admin_app = build_admin_app(admin, admin_api_keys=list(admin_api_keys), max_request_bytes=65536,
                                upstreams=clients.upstreams)
    return AdminStack(store, ops, controller, routes, AdminSwitch(public, admin_app), clients)
