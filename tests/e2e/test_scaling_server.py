"""Autoscaling on real local Ray (fake models): a burst scales a model from 1 to more replicas and back, a model at
zero replicas answers its first request and goes back to zero, a model at zero with no room answers 503 within its
cold-start bound, and a registration that does not fit is refused at once. One server for the module."""
from __future__ import annotations

import os
import threading
import time

import httpx
import openai
import pytest

from tests.e2e.server_process import REPO, ServerProcess, wait_for

pytestmark = pytest.mark.ray

CONFIG = os.path.join(REPO, "tests", "e2e", "scaling_models.yaml")
# Serve's handles and replicas report their load every 10 s by default; the autoscaler would see a burst late.
FAST_METRICS = {"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
                "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}
REPLICA_START_S = 240  # a new replica is a new Ray worker process: tens of seconds on a busy 2-core machine


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(CONFIG, env=FAST_METRICS)
    yield srv
    srv.cleanup()


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=REPLICA_START_S + 60)


def replicas(admin: httpx.Client, name: str) -> dict:
    return admin.get(f"/models/{name}").json()["replicas"] or {"target": None, "running": None}


def model_state(server, name: str) -> str:
    return httpx.get(f"{server.base_url}/v1/models/{name}", timeout=30).json()["state"]


def test_a_registration_that_does_not_fit_is_refused_at_once(admin):
    started = time.monotonic()
    r = admin.post("/models", json={"name": "big", "task": "embedding", "source": "fake:", "resources": {"num_cpus": 1.95}})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "insufficient_resources"), r.text
    message = r.json()["error"]["message"]
    assert "asks 1.95 CPU" in message and "(of 2 CPU); undeploy a model or lower resources.num_cpus" in message
    assert time.monotonic() - started < 30 and admin.get("/models/big").status_code == 404


def test_a_burst_scales_out_to_more_replicas_and_back_to_the_minimum_when_idle(server, admin, oai):
    assert replicas(admin, "burst")["running"] == 1
    stop = threading.Event()

    def keep_busy():  # each request holds a replica's slot for ~2 s (40 tokens at 20 a second)
        while not stop.is_set():
            oai.chat.completions.create(model="burst", messages=[{"role": "user", "content": "hi"}], max_tokens=40,
                                        extra_body={"ignore_eos": True})

    clients = [threading.Thread(target=keep_busy) for _ in range(6)]
    for c in clients:
        c.start()
    try:
        scaled = wait_for(lambda: (r := replicas(admin, "burst"))["running"] >= 2 and r, REPLICA_START_S,
                          "burst reached 2 running replicas")
    finally:
        stop.set()
        for c in clients:
            c.join(120)
    assert scaled["target"] >= 2 and scaled["running"] <= 3
    wait_for(lambda: (r := replicas(admin, "burst"))["target"] == 1 and r["running"] == 1, 120,
             "burst back to 1 replica")
    log = server.log()
    assert "burst: 2 replica(s) running" in log or "burst: 3 replica(s) running" in log  # our controller's line
    assert "Upscaling Deployment(name='model:burst'" in log  # Serve's autoscaler decision, in the server's log


def test_a_model_at_zero_answers_its_first_request_and_goes_back_to_zero(server, admin, oai):
    wait_for(lambda: replicas(admin, "zero")["target"] == 0, 60, "zero at 0 replicas")
    wait_for(lambda: model_state(server, "zero") == "scaled_to_zero", 30, "/v1/models says scaled_to_zero")
    assert "zero" in [m.id for m in oai.models.list().data]
    started = time.monotonic()
    assert len(oai.embeddings.create(model="zero", input=["a", "b"]).data) == 2
    print(f"\ncold start of a fake embedding model: {time.monotonic() - started:.1f} s")
    # The admin API shows the controller's view of the replicas, refreshed every few seconds: it may lag the answer.
    wait_for(lambda: replicas(admin, "zero")["running"] == 1, 30, "zero at 1 running replica")
    wait_for(lambda: model_state(server, "zero") == "ready", 30, "/v1/models says ready")
    wait_for(lambda: (r := replicas(admin, "zero"))["target"] == 0 and r["running"] == 0, 120,
             "zero back to 0 replicas when idle")
    wait_for(lambda: model_state(server, "zero") == "scaled_to_zero", 30, "/v1/models says scaled_to_zero again")
    assert len(oai.embeddings.create(model="zero", input=["c"]).data) == 1  # and it wakes up again


def test_a_model_at_zero_with_no_room_answers_503_within_its_cold_start_bound(server, admin):
    body = {"name": "no-room", "task": "embedding", "source": "fake:", "resources": {"num_cpus": 1.95},
            "autoscaling": {"min_replicas": 0, "max_replicas": 1, "cold_start_timeout_s": 5}}
    r = admin.post("/models", json=body)  # at zero replicas it needs no room to be deployed
    assert r.status_code == 201, r.text
    wait_for(lambda: admin.get("/models/no-room").json()["status"] == "ready", 60, "no-room ready")
    wait_for(lambda: "no-room" in [m["id"] for m in httpx.get(server.base_url + "/v1/models").json()["data"]], 30,
             "no-room routed")
    started = time.monotonic()
    r = httpx.post(server.base_url + "/v1/embeddings", json={"model": "no-room", "input": "x"}, timeout=60)
    waited = time.monotonic() - started
    assert (r.status_code, r.json()["error"]["code"]) == (503, "queue_timeout"), r.text
    assert int(r.headers["retry-after"]) >= 1 and 5 <= waited < 20
    assert admin.delete("/models/no-room").status_code == 200
