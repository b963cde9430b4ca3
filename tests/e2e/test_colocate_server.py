"""Colocation on a real server (real local Ray, `openserve up`): fake models in one group share one replica process;
a member added at runtime loads in place while another member keeps answering, a removed one is gone, and a member
whose load fails is `failed` while the others still serve. One server for the module; the tests run in order."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import psutil
import pytest

from tests.e2e.server_process import REPO, ServerProcess, wait_for

pytestmark = pytest.mark.ray

CONFIG = f"{REPO}/tests/e2e/colocate_models.yaml"
JSON = {"content-type": "application/json"}  # the admin API refuses writes without it
LOAD_S = 120  # a member's load or a status change; only reached when something is broken
ADDED = {"name": "fake-image", "task": "image", "source": "fake:", "resources": {"num_cpus": 0.1}, "colocate": "fakes"}


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(CONFIG)
    yield srv
    srv.cleanup()


@pytest.fixture
def admin(server):
    with httpx.Client(base_url=server.base_url + "/admin", timeout=60, headers=JSON) as client:
        yield client


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=60)


def status(admin: httpx.Client, name: str, *wanted: str) -> dict:
    """The model's entry once its status is one of `wanted`."""
    return wait_for(lambda: (e := admin.get(f"/models/{name}").json()).get("status") in wanted and e, LOAD_S,
                    f"{name} {' or '.join(wanted)}", seen=lambda: admin.get(f"/models/{name}").json())


def speaks(oai: openai.OpenAI) -> bool:
    """The group's speech member answers with a WAV file."""
    audio = oai.audio.speech.create(model="fake-speech", voice="alloy", input="hi", response_format="wav")
    return audio.content[:4] == b"RIFF"


def group_replicas(server: ServerProcess) -> list[int]:
    """The pids of the group's replica processes (Ray titles them ServeReplica:group:fakes:...)."""
    pids = []
    for p in server.processes():
        try:
            if "ServeReplica:group:fakes" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.Error:  # ended meanwhile
            pass
    return pids


class Embedder(threading.Thread):
    """Embeds one input after the other until stopped; counts answers and keeps every failure."""

    def __init__(self, oai: openai.OpenAI):
        super().__init__(daemon=True)
        self.oai, self.ok, self.failures, self.stop = oai, 0, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                assert len(self.oai.embeddings.create(model="fake-embed", input=["hello"]).data) == 1
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure is the test's finding
                self.failures.append(repr(e))

    def finish(self) -> None:
        self.stop.set()
        self.join(30)


def test_the_groups_models_share_one_replica_process(server, admin, oai):
    assert status(admin, "fake-embed", "ready") and status(admin, "fake-speech", "ready")
    assert len(oai.embeddings.create(model="fake-embed", input=["a", "b"]).data) == 2
    assert speaks(oai)
    assert len(group_replicas(server)) == 1


def test_a_member_added_at_runtime_loads_while_another_keeps_answering(server, admin, oai):
    before = group_replicas(server)
    embedder = Embedder(oai)
    embedder.start()
    try:
        wait_for(lambda: embedder.ok >= 5, 30, "requests answered before the change")
        assert admin.post("/models", json=ADDED).status_code == 201
        status(admin, "fake-image", "ready")
        answered = embedder.ok
        wait_for(lambda: embedder.ok >= answered + 5, 30, "requests answered after the change")
    finally:
        embedder.finish()
    assert embedder.failures == []
    image = oai.images.generate(model="fake-image", prompt="a cat", size="256x256", response_format="b64_json")
    assert image.data[0].b64_json
    assert group_replicas(server) == before  # loaded in the same process: no restart


def test_a_removed_member_is_gone_and_the_others_still_answer(server, admin, oai):
    assert admin.delete("/models/fake-image").status_code == 200
    wait_for(lambda: admin.get("/models/fake-image").status_code == 404, LOAD_S, "fake-image deleted")
    with pytest.raises(openai.NotFoundError):
        oai.images.generate(model="fake-image", prompt="a cat", size="256x256")
    assert len(oai.embeddings.create(model="fake-embed", input=["a"]).data) == 1


def test_a_member_whose_load_fails_is_failed_while_the_others_serve(server, admin, oai):
    broken = {**ADDED, "name": "broken-image", "options": {"no_such_option": 1}}
    assert admin.post("/models", json=broken).status_code == 201
    entry = status(admin, "broken-image", "failed", "ready")
    assert entry["status"] == "failed" and "no_such_option" in entry["error"]
    assert len(oai.embeddings.create(model="fake-embed", input=["a"]).data) == 1
    assert speaks(oai)
    assert len(group_replicas(server)) == 1
