"""What `openserve up` does with the registry: open and seed it, then wait until the deployed models settle."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Callable

from sqlalchemy.engine import make_url

from serving.config import AppConfig, ModelConfig, ServerConfig
from serving.registry.entry import ModelEntry
from serving.registry.store import RegistryStore

Say = Callable[[str], None]
SETTLED = ("ready", "failed", "registered", "stopped")


def open_registry(config: AppConfig, config_path: str, apply_config: bool, say: Say) -> RegistryStore:
    """Open (and migrate) the registry; the configuration's models seed it the first time only, or every time
    with apply_config. Statuses left by the last run are reset: nothing is deployed yet."""
    url = config.server.resolved_registry_url
    store = RegistryStore.open(url)
    written = store.seed(config.models, actor=f"config:{config_path}", replace=apply_config)
    shown = make_url(url).render_as_string(hide_password=True)
    entries = store.list()
    seeded = f", {len(written)} written from {config_path}" if written else ""
    say(f"registry {shown}: {len(entries)} model(s){seeded}")
    registered = {e.name: e.spec for e in entries}
    differ = [m.name for m in config.models if registered.get(m.name) != m]
    if differ and not apply_config:
        say(f"  the registry wins over {config_path} for: {', '.join(differ)} (--apply-config writes the file's)")
    store.reset_runtime_statuses()
    return store


def running_models(config: AppConfig) -> list[ModelConfig]:
    """The models the registry marks deployed, or the configuration's when it has no registry yet (what its first
    start would seed)."""
    url = make_url(config.server.resolved_registry_url)
    if url.get_backend_name() == "sqlite" and not os.path.exists(url.database or ""):
        return list(config.models)
    store = RegistryStore.open(str(url))
    try:
        return [e.spec for e in store.list() if e.deployed]
    finally:
        store.close()


def wait_for_models(store: RegistryStore, server: ServerConfig, say: Say, poll_s: float = 0.5) -> list[ModelEntry]:
    """Report status changes until every model marked deployed is ready or failed; then wait until the ingress
    routes the ready ones. Returns the deployed entries."""
    last: dict[str, str] = {}
    deadline = time.monotonic() + server.deploy_timeout_s + 60  # the controller fails a model by then anyway
    while time.monotonic() < deadline:
        entries = [e for e in store.list() if e.deployed]
        for e in entries:
            if last.get(e.name) != e.status:
                last[e.name] = e.status
                say(f"{e.name}: {e.status}" + (f": {e.error}" if e.error else ""))
        if all(e.status in SETTLED for e in entries):
            break
        time.sleep(poll_s)
    _wait_routed(server, {e.name for e in entries if e.status == "ready"})
    return entries


def _wait_routed(server: ServerConfig, names: set[str], timeout_s: float = 30.0) -> None:
    """Until GET /ready says each of `names` is ready, i.e. routed by the ingress (which re-reads the registry every
    routes_refresh_s). /ready needs no key: the YAML may hold only hashes of the keys."""
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{server.port}/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                models = json.load(response)["models"]
        except urllib.error.HTTPError as e:  # 503 until every deployed model is ready: the body says which are
            models = json.load(e)["models"]
        except (OSError, ValueError, KeyError):
            models = {}
        if all(models.get(name) == "ready" for name in names):
            return
        time.sleep(0.2)
