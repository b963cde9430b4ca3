"""An in-memory Ray Serve (ServeOps) and the admin stack wired in-process over it: registry tests without Ray."""
from __future__ import annotations

from dataclasses import dataclass, field

from serving.admin.app import AdminSwitch, build_admin_app
from serving.admin.service import RegistryAdmin
from serving.api.app import build_app
from serving.config import ModelConfig
from serving.registry.controller import AppState, ControllerSettings, ModelController
from serving.registry.routes import RegistryRoutes
from serving.registry.store import RegistryStore
from serving.router import ModelRouter
from serving.upstream.pool import UpstreamPool
from tests.api_fakes import FakeChatClient, FakeEmbeddingClient, FakeImageClient, FakeSpeechClient

FAST = ControllerSettings(deploy_timeout_s=5, schedule_timeout_s=0.2, route_grace_s=0, poll_s=0.01)


@dataclass
class FakeServeOps:
    """Applications that are RUNNING as soon as they run, unless `outcomes[model name]` says otherwise."""

    nodes_: list[dict] = field(default_factory=lambda: [{"CPU": 2.0, "memory": 1e9}])
    outcomes: dict[str, AppState] = field(default_factory=dict)
    running: dict[str, AppState] = field(default_factory=dict)
    runs: list[tuple[str, int]] = field(default_factory=list)  # (model, max_batch_size) per run
    deleted: list[str] = field(default_factory=list)

    def run(self, spec: ModelConfig) -> None:
        self.runs.append((spec.name, spec.batching.max_batch_size))
        self.running[spec.deployment_name] = self.outcomes.get(spec.name, AppState("RUNNING"))

    def delete(self, app: str) -> None:
        self.running.pop(app, None)
        self.deleted.append(app)

    def state(self, app: str) -> AppState | None:
        return self.running.get(app)

    def apps(self) -> list[str]:
        return list(self.running)

    def nodes(self) -> list[dict]:
        return self.nodes_


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
    routes = RegistryRoutes(store, router, clients, interval_s=0.05)

    async def notify(name: str) -> None:
        controller.notify(name)

    admin = RegistryAdmin(store, notify, refresh=routes.refresh,
                          engine_stats=lambda name: router.own_client(name, "chat").engine_stats())
    public = build_app(router, api_keys=list(api_keys))
    admin_app = build_admin_app(admin, admin_api_keys=list(admin_api_keys), max_request_bytes=65536,
                                upstreams=clients.upstreams)
    return AdminStack(store, ops, controller, routes, AdminSwitch(public, admin_app), clients)
