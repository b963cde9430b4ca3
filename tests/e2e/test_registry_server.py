"""The model registry on a real server (real local Ray, real SQLite file): register, chat, update, undeploy, delete,
failures, concurrency, restart, and kill -9. The tests run in order on one data dir; each server is reused."""
from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest

from tests.e2e.server_process import REPO, ServerProcess
from tests.fixtures.tiny_llm import build_tiny_llm

pytestmark = pytest.mark.ray

CONFIG = os.path.join(REPO, "tests", "e2e", "registry_models.yaml")
OPEN = ("--allow-unauthenticated",)  # the config listens on 0.0.0.0 without keys, on purpose
TINY = {"name": "tiny/llama", "task": "chat", "aliases": ["tiny"], "resources": {"num_cpus": 0.1},
        "options": {"max_model_len": 256}}
SLOW_CHAT = {"name": "slow-chat", "task": "chat", "source": "fake:", "resources": {"num_cpus": 0.1},
             "options": {"step_delay": 0.05}}  # 20 tokens a second: long enough to undeploy mid-request
SPEECH = {"name": "fake-speech", "task": "speech", "source": "fake:", "resources": {"num_cpus": 0.1}}


@pytest.fixture(scope="module")
def data_dir():
    path = tempfile.mkdtemp(prefix="osv-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def servers(data_dir):
    """The servers started on `data_dir`, newest last (the restart tests add theirs)."""
    started = [ServerProcess(CONFIG, data_dir=data_dir, extra_args=OPEN)]
    yield started
    for server in started:
        server.cleanup(remove_data=False)


JSON = {"content-type": "application/json"}  # the admin API refuses writes without it (a body or not)


@pytest.fixture
def admin(servers):
    with httpx.Client(base_url=servers[-1].base_url + "/admin", timeout=60, headers=JSON) as client:
        yield client


@pytest.fixture
def oai(servers):
    return openai.OpenAI(base_url=servers[-1].base_url + "/v1", api_key="x", max_retries=0, timeout=60)


def wait_status(admin: httpx.Client, name: str, statuses: tuple[str, ...], timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        entry = admin.get(f"/models/{name}").json()
        if entry["status"] in statuses or time.monotonic() > deadline:
            return entry
        time.sleep(0.25)


def embed_ok(oai: openai.OpenAI) -> bool:
    return len(oai.embeddings.create(model="fake-embed", input=["a", "b"]).data) == 2


def test_the_yaml_seeds_the_registry(admin, oai):
    entry = admin.get("/models/fake-embed").json()
    assert (entry["status"], entry["created_by"]) == ("ready", f"config:{CONFIG}")
    assert [m.id for m in oai.models.list().data] == ["fake-embed"]


def test_register_a_local_model_dir_and_chat_by_name_and_alias(admin, oai, data_dir):
    source = build_tiny_llm(os.path.join(data_dir, "tiny-llm"))
    r = admin.post("/models", json={**TINY, "source": source})
    assert (r.status_code, r.json()["status"]) == (201, "deploying"), r.text
    assert admin.post("/models", json=SLOW_CHAT).status_code == 201  # for the undeploy test; deploys meanwhile
    assert wait_status(admin, "tiny/llama", ("ready", "failed"))["status"] == "ready"
    assert wait_status(admin, "slow-chat", ("ready", "failed"))["status"] == "ready"
    assert {m.id for m in oai.models.list().data} == {"fake-embed", "tiny/llama", "slow-chat"}
    for model in ("tiny/llama", "tiny"):
        reply = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
    stats = admin.get("/models/tiny/llama/engine").json()["stats"]  # the path the replica's engine runs
    assert (stats["batched"], stats["device"], stats["cuda_graphs_on"], stats["cuda_graphs"]) == (True, "cpu", False, 0)
    assert admin.get("/models/fake-embed/engine").status_code == 400


def test_update_batching_redeploys_while_the_model_keeps_serving(admin, oai):
    r = admin.patch("/models/fake-embed", json={"batching": {"max_batch_size": 4}})
    assert (r.status_code, r.json()["status"], r.json()["version"]) == (200, "updating", 2), r.text
    while admin.get("/models/fake-embed").json()["status"] == "updating":
        assert embed_ok(oai)  # the old replica serves until the new one is up
        time.sleep(0.2)
    entry = admin.get("/models/fake-embed").json()
    assert (entry["status"], entry["config"]["batching"]["max_batch_size"]) == ("ready", 4)
    assert embed_ok(oai)


def test_a_client_that_hangs_up_mid_stream_frees_its_slot_at_once(admin, oai):
    """One slot and no queue in the engine: while a request runs, the next gets the engine's 429 (the replica is
    let take two, so that the second reaches the engine rather than waiting in Serve's queue at the ingress).
    Hanging up must abort the first in the engine (through the ingress's HTTP server, the handle and the replica),
    not leave it running its 1000 tokens (20 s)."""
    body = {"name": "one-slot-chat", "task": "chat", "source": "fake:", "resources": {"num_cpus": 0.1},
            "max_ongoing_requests": 2, "options": {"step_delay": 0.02, "max_running": 1, "max_queued": 0}}
    assert admin.post("/models", json=body).status_code == 201
    assert wait_status(admin, "one-slot-chat", ("ready", "failed"))["status"] == "ready"
    messages = [{"role": "user", "content": "Hi"}]
    stream = oai.chat.completions.create(model="one-slot-chat", messages=messages, max_tokens=1000, stream=True,
                                         extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks), next(chunks)
    with pytest.raises(openai.RateLimitError):  # the slot is taken
        oai.chat.completions.create(model="one-slot-chat", messages=messages, max_tokens=4)
    stream.close()
    deadline, answered = time.monotonic() + 5, None
    while answered is None and time.monotonic() < deadline:
        try:
            answered = oai.chat.completions.create(model="one-slot-chat", messages=messages, max_tokens=4)
        except openai.RateLimitError:
            time.sleep(0.1)
    assert answered is not None and answered.choices[0].finish_reason in ("stop", "length")
    assert admin.delete("/models/one-slot-chat").status_code in (200, 202, 204)


def test_undeploy_drains_in_flight_requests_and_new_ones_get_404(admin, oai):
    messages = [{"role": "user", "content": "Hi"}]
    stream = oai.chat.completions.create(model="slow-chat", messages=messages, max_tokens=60, stream=True,
                                         stream_options={"include_usage": True},
                                         extra_body={"ignore_eos": True})  # 3 s: outlives the undeploy's start
    chunks = iter(stream)
    first = next(chunks)
    r = admin.post("/models/slow-chat/undeploy")
    assert (r.status_code, r.json()["status"]) == (202, "stopping")
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="slow-chat", messages=messages, max_tokens=4)
    rest = list(chunks)  # the request that was running finishes in full
    assert rest[-1].usage.completion_tokens == 60
    assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "length"
    assert wait_status(admin, "slow-chat", ("stopped",))["status"] == "stopped"
    assert {m.id for m in oai.models.list().data} == {"fake-embed", "tiny/llama"}


def test_delete_a_stopped_and_a_deployed_model(admin, oai):
    for name in ("slow-chat", "tiny/llama"):
        assert admin.delete(f"/models/{name}").json() == {"id": name, "object": "model", "deleted": True}
        r = admin.get(f"/models/{name}")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    assert [m.id for m in oai.models.list().data] == ["fake-embed"]


def test_models_that_cannot_deploy_fail_with_a_reason_and_the_rest_keep_serving(admin, oai, data_dir):
    r = admin.post("/models", json={**SPEECH, "name": "nowhere", "source": "/no/such/model"})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "source")
    empty = os.path.join(data_dir, "empty-model")
    os.makedirs(empty, exist_ok=True)
    admin.post("/models", json={**TINY, "name": "empty", "aliases": [], "source": empty})
    gpu = admin.post("/models", json={**SPEECH, "name": "gpu-hungry", "resources": {"num_gpus": 1}})
    assert (gpu.status_code, gpu.json()["error"]["code"]) == (400, "insufficient_resources")  # at once, not deployed
    assert "no Ray node has that much: the largest has 0 GPU" in gpu.json()["error"]["message"]
    source = build_tiny_llm(os.path.join(data_dir, "tiny-llm"))
    admin.post("/models", json={**TINY, "name": "cuda-less", "aliases": [], "source": source, "device": "cuda"})
    assert embed_ok(oai)
    bad = wait_status(admin, "empty", ("failed", "ready"))
    assert bad["status"] == "failed" and bad["error"].startswith("the model failed to start:"), bad
    cuda = wait_status(admin, "cuda-less", ("failed", "ready"))  # no GPU here: a loud failure, not a CPU run
    assert cuda["status"] == "failed" and "asks for a GPU (device: cuda) but CUDA is not usable" in cuda["error"]
    assert embed_ok(oai) and [m.id for m in oai.models.list().data] == ["fake-embed"]
    for name in ("empty", "cuda-less"):  # or the restart below would try them again
        assert admin.delete(f"/models/{name}").status_code == 200


def test_twenty_concurrent_registrations_leave_a_consistent_registry(admin):
    names = [f"batch-{i % 15}" for i in range(20)]  # 5 names are fought over by two requests each

    def register(i: int) -> int:
        body = {"name": names[i], "task": "embedding", "source": "fake:", "aliases": [f"batch-alias-{i}"],
                "deploy": False}
        return admin.post("/models", json=body).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(register, range(20)))
    assert sorted(codes) == [201] * 15 + [409] * 5
    batch = [e for e in admin.get("/models").json()["data"] if e["name"].startswith("batch-")]
    assert sorted(e["name"] for e in batch) == sorted(set(names))
    assert all(e["status"] == "registered" and len(e["config"]["aliases"]) == 1 for e in batch)


def _own_non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    return None


def test_admin_refuses_a_non_loopback_client_without_an_admin_key(servers):
    ip = _own_non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    r = httpx.get(f"http://{ip}:{servers[-1].port}/admin/models", timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "admin_loopback_only")
    assert httpx.get(f"http://{ip}:{servers[-1].port}/v1/models", timeout=30).status_code == 200


WRITERS = 20
KILL_AFTER = 40  # registrations acknowledged before the kill: the writers are in full swing by then


def _register_until_killed(base_url: str, writer: int, sent: dict[str, dict], acknowledged: list[str],
                           enough: threading.Event, stop: threading.Event) -> None:
    with httpx.Client(base_url=base_url + "/admin", timeout=10, headers=JSON) as admin:
        for i in range(10_000):
            if stop.is_set():
                return
            name = f"crash-{writer}-{i}"
            sent[name] = {"name": name, "task": "chat", "source": "fake:", "deploy": False,
                          "aliases": [f"{name}-alias"], "description": f"written by {writer}"}
            try:
                r = admin.post("/models", json=sent[name])
            except httpx.HTTPError:
                return  # the server is gone
            if r.status_code == 201:
                acknowledged.append(name)
                if len(acknowledged) >= KILL_AFTER:
                    enough.set()


def test_kill_9_during_20_concurrent_registrations_then_a_restart_brings_back_the_registry_intact(servers, data_dir):
    with httpx.Client(base_url=servers[-1].base_url + "/admin", timeout=60, headers=JSON) as admin:
        assert admin.post("/models", json=SPEECH).status_code == 201
        assert wait_status(admin, "fake-speech", ("ready", "failed"))["status"] == "ready"
        before = {e["name"]: e for e in admin.get("/models").json()["data"]}
    sent: dict[str, dict] = {}
    acknowledged: list[str] = []
    enough, stop = threading.Event(), threading.Event()
    writers = [threading.Thread(target=_register_until_killed,
                                args=(servers[-1].base_url, w, sent, acknowledged, enough, stop))
               for w in range(WRITERS)]
    for w in writers:
        w.start()
    assert enough.wait(120), f"only {len(acknowledged)} registrations in 120 s"
    servers[-1].kill()  # kill -9 of every process while 20 registrations are in flight
    stop.set()
    for w in writers:
        w.join(30)
    with sqlite3.connect(os.path.join(data_dir, "registry.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        names = dict(conn.execute("SELECT name, model FROM model_names WHERE model LIKE 'crash-%'").fetchall())

    servers.append(ServerProcess(CONFIG, data_dir=data_dir, extra_args=OPEN))
    with httpx.Client(base_url=servers[-1].base_url + "/admin", timeout=60, headers=JSON) as admin:
        listing = admin.get("/models").json()
        after = {e["name"]: e for e in listing["data"]}
    crashed = {n for n in after if n.startswith("crash-")}
    assert set(acknowledged) <= crashed <= set(sent)  # acknowledged: there; in flight: there or not
    for name in crashed:  # each one whole: its configuration and its alias, or nothing of it
        config, wanted = after[name]["config"], sent[name]
        assert (config["aliases"], config["description"], after[name]["status"]) == (
            wanted["aliases"], wanted["description"], "registered")
    assert names == {**{n: n for n in crashed}, **{f"{n}-alias": n for n in crashed}}
    assert listing["invalid"] == []
    assert {n: e["config"] for n, e in after.items() if n not in crashed} == {n: e["config"] for n, e in before.items()}
    assert {n for n, e in after.items() if e["status"] == "ready"} == {"fake-embed", "fake-speech"}
    assert after["fake-embed"]["config"]["batching"]["max_batch_size"] == 4  # the registry won over the YAML
    audio = httpx.post(servers[-1].base_url + "/v1/audio/speech", timeout=60,
                       json={"model": "fake-speech", "input": "hello", "voice": "alloy", "response_format": "wav"})
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
    assert servers[-1].stop() is not None and servers[-1].leftover_processes() == []  # a clean Ctrl-C stop
