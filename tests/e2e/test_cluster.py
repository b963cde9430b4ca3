"""A Ray cluster of two nodes on this machine, with token auth on: `openserve up --address` joins it and places a
model on the node that has the resource it asks for; fractional GPUs (Ray's logical GPUs: the head has 2) pack four
models onto two GPUs and refuse a fifth; killing a node fails its model while the others serve, and its return
brings the model back; `openserve serve-config` + `serve deploy` (Ray's own tooling) serve the same models."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import httpx
import pytest
import yaml

from tests.e2e.ray_cluster import start_node
from tests.e2e.server_process import REPO, ServerProcess, free_port, wait_for

pytestmark = pytest.mark.ray

CONFIG = os.path.join(REPO, "tests", "e2e", "cluster_models.yaml")
SPECIAL = {"name": "special-embed", "task": "embedding", "source": "fake:",
           "resources": {"num_cpus": 0, "custom": {"special": 1}}}
SERVE = os.path.join(os.path.dirname(sys.executable), "serve")


@pytest.fixture(scope="module")
def auth(tmp_path_factory):
    """Token auth, as Ray clusters have it by default, with a token of our own (not ~/.ray/auth_token)."""
    token = tmp_path_factory.mktemp("auth") / "token"
    token.write_text("openserve-e2e-" + os.urandom(12).hex())
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def cluster(auth):
    """{head, worker, dashboard}: the head with 2 CPUs, 2 logical GPUs and the dashboard (serve deploy talks to
    it); a worker with the custom resource `special` and no CPU to offer, so only models that ask for `special`
    go there (Serve spreads replicas over the nodes that have room)."""
    env = dict(os.environ, **auth)
    dashboard = free_port()
    cluster = {"dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    cluster["head"] = start_node(env, num_cpus=2, num_gpus=2, dashboard_port=dashboard)
    try:
        cluster["worker"] = start_node(env, address=cluster["head"].address, num_cpus=0, resources={"special": 1})
        yield cluster  # a test may replace the worker: the nodes cleaned up are the ones there at the end
    finally:
        for node in (cluster.get("worker"), cluster["head"]):
            if node is not None:
                node.cleanup()


@pytest.fixture(scope="module")
def server(cluster, auth):
    data_dir = tempfile.mkdtemp(prefix="osv-", dir="/tmp")
    srv = ServerProcess(CONFIG, data_dir=data_dir, extra_args=["--address", cluster["head"].address], env=auth)
    yield srv
    srv.cleanup()


def ready(admin: httpx.Client, name: str, timeout_s: float = 300) -> dict:
    entry = wait_for(lambda: (e := admin.get(f"/models/{name}").json())["status"] in ("ready", "failed") and e,
                     timeout_s, f"{name} ready or failed")
    assert entry["status"] == "ready", entry
    return entry


def placement(admin: httpx.Client, name: str) -> dict:
    """The model's one replica once it is ready and has reported where it runs (its report follows its start)."""
    ready(admin, name)

    def reported():
        replicas = admin.get(f"/models/{name}").json()["replicas"]["replicas"]
        return replicas and replicas[0]["device"] is not None and replicas[0]

    return wait_for(reported, 60, f"{name}'s replica reported its placement")


def embed(base_url: str, model: str) -> int:
    return httpx.post(base_url + "/v1/embeddings", json={"model": model, "input": "x"}, timeout=120).status_code


def test_up_joins_the_cluster_and_places_a_model_where_its_resource_is(cluster, server, admin):
    assert admin.post("/models", json=SPECIAL).status_code == 201
    replica = placement(admin, "special-embed")
    assert replica["node_id"] == cluster["worker"].node_id  # the only node with `special`
    embedder = placement(admin, "fake-embed")
    assert embedder["node_id"] == cluster["head"].node_id
    assert embed(server.base_url, "special-embed") == 200 and embed(server.base_url, "fake-embed") == 200
    assert embedder["device"] == replica["device"] == "cpu" and replica["gpu_ids"] == []


def test_four_half_gpu_models_pack_onto_two_gpus_and_a_fifth_is_refused(cluster, server, admin):
    names = [f"half-gpu-{i}" for i in range(4)]
    for name in names:
        body = {"name": name, "task": "chat", "source": "fake:", "resources": {"num_cpus": 0.05, "num_gpus": 0.5}}
        assert admin.post("/models", json=body).status_code == 201, name
    placed = [placement(admin, name) for name in names]
    assert sorted(p["gpu_ids"][0] for p in placed) == ["0", "0", "1", "1"]  # two models on each GPU
    assert all(p["device"] == "cuda" and p["cuda_visible_devices"] == p["gpu_ids"][0] for p in placed)
    assert all(p["node_id"] == cluster["head"].node_id for p in placed)
    reply = httpx.post(server.base_url + "/v1/chat/completions", timeout=60,
                       json={"model": names[0], "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200
    fifth = admin.post("/models", json={"name": "half-gpu-4", "task": "chat", "source": "fake:",
                                        "resources": {"num_cpus": 0.05, "num_gpus": 0.5}})
    assert (fifth.status_code, fifth.json()["error"]["code"]) == (409, "insufficient_resources")
    assert "the node with the most free has 0 GPU free (of 2 GPU)" in fifth.json()["error"]["message"]
    for name in names:  # the serve-config test below deploys the rest again
        assert admin.delete(f"/models/{name}").status_code == 200


def test_a_dead_node_fails_its_model_the_others_go_on_and_its_return_brings_the_model_back(cluster, server, admin):
    cluster["worker"].kill()
    failed = wait_for(lambda: (e := admin.get("/models/special-embed").json())["status"] == "failed" and e, 120,
                      "special-embed failed once its node died")
    assert failed["error"].startswith("no running replica")
    assert embed(server.base_url, "fake-embed") == 200
    assert embed(server.base_url, "special-embed") == 404  # not served while failed
    cluster.pop("worker").cleanup()
    cluster["worker"] = start_node(cluster["env"], address=cluster["head"].address, num_cpus=0,
                                   resources={"special": 1})
    wait_for(lambda: admin.get("/models/special-embed").json()["status"] == "ready", 300,
             "special-embed ready again on the node that came back")
    assert embed(server.base_url, "special-embed") == 200


def serve_status(cluster) -> dict:
    out = subprocess.run([SERVE, "status", "--address", cluster["dashboard"]], env=cluster["env"],
                         capture_output=True, text=True, timeout=120)
    return {name: app["status"] for name, app in (yaml.safe_load(out.stdout) or {}).get("applications", {}).items()}


def test_serve_config_deployed_with_rays_own_serve_deploy_serves_the_models(cluster, server, tmp_path):
    assert server.stop() == 130  # Ctrl-C: Serve and its applications go; the cluster stays
    config = tmp_path / "serve.yaml"
    written = subprocess.run([sys.executable, "-m", "serving.cli", "serve-config", "--data-dir", server.data_dir,
                              "--port", str(server.port), "-o", str(config)], cwd=REPO, capture_output=True, text=True)
    assert written.returncode == 0 and "2 model(s) (fake-embed, special-embed)" in written.stderr, written.stderr
    deployed = subprocess.run([SERVE, "deploy", str(config), "--address", cluster["dashboard"]], env=cluster["env"],
                              capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    expected = {"openserve", "model:fake-embed", "model:special-embed"}
    wait_for(lambda: (s := serve_status(cluster)).keys() == expected and set(s.values()) == {"RUNNING"}, 300,
             "every application RUNNING")
    models = httpx.get(server.base_url + "/v1/models", timeout=30).json()["data"]
    assert sorted(m["id"] for m in models) == ["fake-embed", "special-embed"]
    assert embed(server.base_url, "fake-embed") == 200 and embed(server.base_url, "special-embed") == 200
    assert httpx.get(server.base_url + "/admin/models", timeout=30).status_code == 404  # the file rules, not /admin
    shutil.rmtree(server.data_dir, ignore_errors=True)
