"""The ingress' whole app in-process (request ids, access log, metrics, keys, /ready) over a real registry file and
fake model clients, driven by the official openai client."""
import asyncio
import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.admin.service import RegistryAdmin
from serving.api.server import build_server_app
from serving.clients import ModelCard
from serving.config import ModelConfig, ServerConfig
from serving.metrics.scrape import Scraper, model_state_families
from serving.registry.store import RegistryStore
from serving.router import ServedModel
from tests.api_fakes import CHAT, EMBED, IMAGE, Fakes, FakeEmbeddingClient, openai_httpx


class Stack:
    def __init__(self, tmp_path, fakes: Fakes | None = None, **server):
        self.store = RegistryStore.open(f"sqlite:///{tmp_path}/registry.db")
        self.fakes = fakes or Fakes()
        self.router = self.fakes.router()

        async def notify(name: str) -> None:
            pass

        scraper = Scraper(model_state=lambda: model_state_families(self.store.list(), {}))
        config = ServerConfig(**server)
        self.app, self.ring = build_server_app(config, self.store, self.router, RegistryAdmin(self.store, notify),
                                               scraper)

    def http(self, **headers) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers)

    def oai(self, key: str = "unused", max_retries: int = 0) -> openai.AsyncOpenAI:
        http = openai_httpx.AsyncClient(transport=openai_httpx.ASGITransport(app=self.app), base_url="http://127.0.0.1")
        return openai.AsyncOpenAI(base_url="http://127.0.0.1/v1", api_key=key, http_client=http, max_retries=max_retries)

    async def create_key(self, admin_key: str | None = None, **body) -> dict:
        headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
        async with self.http(**headers) as http:
            r = await http.post("/admin/keys", json={"name": "test", **body})
        assert r.status_code == 201, r.text
        return r.json()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    s.store.close()


async def embed(client: openai.AsyncOpenAI, model: str = EMBED, text: str = "one two three"):
    return await client.embeddings.create(model=model, input=[text], encoding_format="float")


async def test_a_created_key_works_at_once_and_turns_auth_on(stack):
    assert len((await embed(stack.oai())).data) == 1  # no key anywhere yet: the server is open
    key = await stack.create_key(scopes=["inference"])
    assert key["key"].startswith("sk-os-") and key["id"].startswith("key_") and key["scopes"] == ["inference"]
    assert len((await embed(stack.oai(key["key"]))).data) == 1
    with pytest.raises(openai.AuthenticationError):
        await embed(stack.oai("sk-os-wrong"))
    async with stack.http() as http:
        listed = (await http.get("/admin/keys")).json()["data"]
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]


async def test_a_key_without_the_scope_gets_403_both_ways(stack):
    admin = await stack.create_key(scopes=["admin"])
    user = await stack.create_key(admin["key"], scopes=["inference"])
    with pytest.raises(openai.PermissionDeniedError):
        await embed(stack.oai(admin["key"]))  # an admin key does not open /v1
    async with stack.http(authorization=f"Bearer {user['key']}") as http:
        r = await http.get("/admin/keys")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "insufficient_scope")
    async with stack.http() as http:  # loopback without a key: refused once an admin key exists
        assert (await http.get("/admin/keys")).status_code == 401


async def test_a_model_off_the_allow_list_is_404_and_hidden_from_the_list(stack):
    key = await stack.create_key(models=[EMBED])
    client = stack.oai(key["key"])
    assert [m.id async for m in client.models.list()] == [EMBED]
    assert len((await embed(client)).data) == 1
    with pytest.raises(openai.NotFoundError) as refused:
        await client.images.generate(model=IMAGE, prompt="x", response_format="b64_json")
    assert refused.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve(CHAT)


async def test_a_revoked_key_is_refused_by_the_next_request(stack):
    key = await stack.create_key()
    client = stack.oai(key["key"])
    await embed(client)
    async with stack.http() as http:
        r = await http.post(f"/admin/keys/{key['id']}/revoke", json={})  # a JSON POST, as the CLI sends
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError):
        await embed(client)


async def test_n_requests_per_minute_admit_exactly_n_of_3n_concurrent(stack):
    key = await stack.create_key(limits={"requests_per_minute": 5})
    client = stack.oai(key["key"])
    results = await asyncio.gather(*(embed(client) for _ in range(15)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert sum(not isinstance(r, Exception) for r in results) == 5 and len(refused) == 10
    first = refused[0].response
    assert first.json()["error"]["type"] == "requests" and first.json()["error"]["code"] == "rate_limit_exceeded"
    assert 11 <= int(first.headers["retry-after"]) <= 12  # one request back every 12 s
    assert first.headers["x-ratelimit-limit-requests"] == "5"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"


class GatedEmbeddings(FakeEmbeddingClient):
    """Holds every call until `gate` is set, so requests really are in flight together."""

    def __init__(self):
        super().__init__()
        self.gate = asyncio.Event()
        self.arrived = 0

    async def embed(self, inputs):
        self.arrived += 1
        await self.gate.wait()
        return await super().embed(inputs)


async def test_concurrent_requests_past_the_limit_get_429_until_one_finishes(tmp_path):
    gated = GatedEmbeddings()
    stack = Stack(tmp_path, Fakes(embed=gated))
    key = await stack.create_key(limits={"max_concurrent": 2})
    client = stack.oai(key["key"])
    tasks = [asyncio.create_task(embed(client)) for _ in range(6)]
    deadline = time.monotonic() + 10
    while (gated.arrived < 2 or sum(t.done() for t in tasks) < 4) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # yield to the requests until the 4 refusals are in and 2 are held
    assert gated.arrived == 2 and all(isinstance(t.exception(), openai.RateLimitError) for t in tasks if t.done())
    gated.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 2
    assert len((await embed(client)).data) == 1  # slots are free again
    stack.store.close()


async def test_tokens_per_minute_charge_what_requests_used(stack):
    key = await stack.create_key(limits={"tokens_per_minute": 6})
    client = stack.oai(key["key"])
    await embed(client, text="one two three four five")  # 5 input tokens: 1 left
    await embed(client, text="one two three four five")  # admitted with 1 left, then 4 in debt
    with pytest.raises(openai.RateLimitError) as refused:
        await embed(client)
    assert refused.value.body["type"] == "tokens"
    assert refused.value.response.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_the_openai_client_retries_after_the_time_the_server_says(stack):
    key = await stack.create_key(limits={"requests_per_minute": 60})  # a burst of 60, then one a second
    client = stack.oai(key["key"])
    for _ in range(200):
        try:
            await embed(client)
        except openai.RateLimitError as e:
            waited = float(e.response.headers["retry-after-ms"]) / 1000
            break
    assert 0 < waited <= 1.0
    started = time.monotonic()
    retrying = stack.oai(key["key"], max_retries=2)
    assert len((await embed(retrying)).data) == 1
    assert time.monotonic() - started >= 0.5 * waited


async def test_request_ids_are_echoed_and_on_the_access_log_line(tmp_path, capsys):
    stack = Stack(tmp_path, log_format="json")
    async with stack.http() as http:
        given = await http.post("/v1/embeddings", json={"model": EMBED, "input": "a b"},
                                headers={"x-request-id": "trace-123"})
        made = await http.get("/v1/models")
        bad = await http.get("/v1/models", headers={"x-request-id": "bad id\nwith newline"})
        await http.get("/health")  # a probe: not logged
    assert given.headers["x-request-id"] == "trace-123"
    assert len(made.headers["x-request-id"]) == 24 and bad.headers["x-request-id"] != "bad id\nwith newline"
    stack.app.access_log.flush()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["path"] for line in lines] == ["/v1/embeddings", "/v1/models", "/v1/models"]
    line = lines[0]
    assert (line["request_id"], line["logger"], line["method"], line["status"], line["model"]) == (
        "trace-123", "serving.access", "POST", 200, EMBED)
    assert (line["prompt_tokens"], line["key_id"], line["client"]) == (2, None, "127.0.0.1")
    assert line["latency_ms"] > 0 and line["message"].startswith("POST /v1/embeddings 200 ")
    stack.store.close()


async def test_text_access_lines_carry_the_request_id_and_the_key_id(tmp_path, capsys):
    stack = Stack(tmp_path)
    key = await stack.create_key()
    await embed(stack.oai(key["key"]))
    stack.app.access_log.flush()
    line = [ln for ln in capsys.readouterr().err.splitlines() if "/v1/embeddings" in ln][0]
    assert " INFO serving.access [" in line and f"key={key['id']}" in line and key["key"] not in line
    assert line.split("[")[1].split("]")[0] != "-"  # the generated request id
    stack.store.close()


def scrape(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


async def test_metrics_count_requests_by_model_endpoint_and_status_and_never_show_a_key(stack):
    """The counters are this process' (other tests count too): the test checks what its own requests added."""
    key = await stack.create_key()
    client = stack.oai(key["key"])
    async with stack.http() as http:
        before = scrape((await http.get("/metrics")).text)
    for _ in range(3):
        await embed(client, text="a b c")
    with pytest.raises(openai.NotFoundError):
        await embed(client, model="no-such-model")
    await client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi there"}])
    async with stack.http() as http:
        text = (await http.get("/metrics")).text
    after = scrape(text)
    got = {k: v - before.get(k, 0) for k, v in after.items()}
    requests = "openserve:requests_total"
    assert got[(requests, (("endpoint", "/v1/embeddings"), ("model", EMBED), ("status", "200")))] == 3
    assert got[(requests, (("endpoint", "/v1/embeddings"), ("model", ""), ("status", "404")))] == 1
    assert got[(requests, (("endpoint", "/v1/chat/completions"), ("model", CHAT), ("status", "200")))] == 1
    assert got[("openserve:prompt_tokens_total", (("model", EMBED),))] == 9
    assert got[("openserve:e2e_request_latency_seconds_count", (("endpoint", "/v1/embeddings"), ("model", EMBED)))] == 3
    assert key["key"] not in text and key["id"] not in text and "no-such-model" not in text


async def test_ready_names_the_deployed_models_not_yet_routed_and_health_is_always_up(stack):
    stack.store.create(ModelConfig(name="late-model", task="embedding", source="fake:"), deployed=True, actor="t")
    async with stack.http() as http:
        assert (await http.get("/health")).status_code == 200
        r = await http.get("/ready")
        assert (r.status_code, r.json()["not_ready"], r.json()["models"]) == (503, ["late-model"],
                                                                              {"late-model": "deploying"})
        assert (await http.get("/ready", params={"model": "late-model"})).status_code == 503
        assert (await http.get("/ready", params={"model": "nope"})).status_code == 404
        stack.store.set_status("late-model", "ready")  # the registry says ready; this ingress does not route it yet
        assert (await http.get("/ready")).json()["models"] == {"late-model": "routing"}
        late = ServedModel(ModelCard("late-model", "embedding", 0), FakeEmbeddingClient())
        stack.router.replace([*(ServedModel(card, None) for card in stack.router.cards()), late])  # now routed
        r = await http.get("/ready")
        assert (r.status_code, r.json()) == (200, {"status": "ready", "models": {"late-model": "ready"}})
        text = (await http.get("/metrics")).text
    assert scrape(text)[("openserve:model_status", (("model", "late-model"), ("status", "ready")))] == 1


async def test_a_scrape_does_not_wait_for_a_busy_model(tmp_path):
    """/metrics never calls a model client: it answers while every embedding call is held."""
    gated = GatedEmbeddings()
    stack = Stack(tmp_path, Fakes(embed=gated))
    held = asyncio.create_task(embed(stack.oai()))
    deadline = time.monotonic() + 10
    while gated.arrived < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    async with stack.http() as http:
        r = await asyncio.wait_for(http.get("/metrics"), 5)
        ready = await asyncio.wait_for(http.get("/ready"), 5)
    assert r.status_code == 200 and "# TYPE openserve:model_status gauge" in r.text and ready.status_code == 200
    assert gated.arrived == 1 and not held.done()
    gated.gate.set()
    await held
    stack.store.close()
