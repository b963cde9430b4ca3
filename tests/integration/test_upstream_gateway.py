"""Upstream models through the real app: a real HTTP upstream (our own app over the API fakes, on uvicorn in this
event loop) answers exactly as it does when called directly; faults injected into it (refused connections, 500s,
hangs, a slow first byte, a stream cut in the middle) open the circuit after the configured failures, callers then
get 503 + Retry-After at once, the fallback answers, and the circuit closes when the upstream is back."""
import asyncio
import base64
import json
import time

import numpy as np
import pytest

from serving.api.app import build_app
from serving.clients import ModelCard
from serving.config import ModelConfig
from serving.metrics.definitions import REGISTRY
from serving.metrics.scrape import Scraper
from serving.router import ModelRouter, ServedModel
from serving.upstream.pool import UpstreamPool
from tests.api_fakes import CHAT, EMBED, IMAGE, SPEECH, Fakes, asgi_client, leave_mid_stream
from tests.integration.test_api_chat import sse_events
from tests.upstream_fakes import Upstream, upstream  # noqa: F401

USER = [{"role": "user", "content": "hello there"}]  # the fake engine answers with it
READ_TIMEOUT_S = 1.5  # generous: the fakes must answer well within it on a loaded 2-core machine
OPEN_S = 30.0
FAILURES = 2
CALL_DEADLINE_S = 10.0  # no call may take longer: a hang of the upstream must never become a hang of ours


class Clock:
    """The breakers' clock: the test moves it past open_s instead of waiting."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def upstream_spec(name: str, remote: str, task: str, base_url: str, **extra) -> ModelConfig:
    return ModelConfig.model_validate({
        "name": name, "task": task,
        "upstream": {"base_url": base_url, "model": remote, "read_timeout_s": READ_TIMEOUT_S,
                     "connect_timeout_s": READ_TIMEOUT_S, "retries": 1, "retry_backoff_s": 0.01,
                     "health_check_s": 0, "breaker": {"failures": FAILURES, "open_s": OPEN_S}},
        **extra,
    })


class Gateway:
    """Upstream models (one per task, plus a chat model with a local fallback) over one pool, in the real app."""

    def __init__(self, upstream: Upstream):
        self.clock = Clock()
        self.pool = UpstreamPool(clock=self.clock)
        self.local = Fakes()  # the fallback's model, in this process
        served = [ServedModel(ModelCard("local-chat", "chat", 0), self.local.chat)]
        for name, remote, task in (("remote-chat", CHAT, "chat"), ("remote-embed", EMBED, "embedding"),
                                   ("remote-image", IMAGE, "image"), ("remote-speech", SPEECH, "speech"),
                                   ("remote-missing", "no-such-model", "chat")):
            spec = upstream_spec(name, remote, task, upstream.base_url)
            served.append(ServedModel(ModelCard(name, task, 0), self.pool.client(spec)))
        guarded = upstream_spec("guarded-chat", CHAT, "chat", upstream.base_url, fallbacks=["local-chat"])
        served.append(ServedModel(ModelCard("guarded-chat", "chat", 0), self.pool.client(guarded), (),
                                  tuple(guarded.fallbacks)))
        self.app = build_app(ModelRouter(served), scraper=Scraper())  # /metrics: this process' numbers

    def circuit(self, name: str) -> str:
        return next(s for s in self.pool.states() if s["name"] == name)["circuit"]["state"]

    async def close(self) -> None:
        await self.pool.close()
        self.local.close()


@pytest.fixture
async def gateway(upstream):
    gw = Gateway(upstream)
    yield gw
    await gw.close()


@pytest.fixture
async def via(gateway):
    async with asgi_client(gateway.app) as client:
        yield client


@pytest.fixture
async def direct(upstream):
    async with asgi_client(upstream.app) as client:
        yield client


def chat_body(model: str, **extra) -> dict:
    return {"model": model, "messages": USER, "temperature": 0, **extra}


async def post(client, path: str, body: dict):
    """POST with a deadline: every answer, error or not, must come back within CALL_DEADLINE_S."""
    return await asyncio.wait_for(client.post(path, json=body), CALL_DEADLINE_S)


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def without_ids(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("id", "created", "model")}


# --- through the gateway, exactly as direct -----------------------------------------------------------------------


async def test_chat_equals_a_direct_call_and_its_tokens_are_counted(via, direct):
    before = [sample(f"openserve:{kind}_tokens_total", model="remote-chat") for kind in ("prompt", "generation")]
    ours = await post(via, "/v1/chat/completions", chat_body("remote-chat", n=2, seed=3, temperature=1.0))
    theirs = await post(direct, "/v1/chat/completions", chat_body(CHAT, n=2, seed=3, temperature=1.0))
    assert ours.status_code == theirs.status_code == 200
    assert without_ids(ours.json()) == without_ids(theirs.json())
    assert ours.json()["model"] == "remote-chat"
    usage = ours.json()["usage"]  # no replica counts an upstream model's tokens: the ingress does
    after = [sample(f"openserve:{kind}_tokens_total", model="remote-chat") for kind in ("prompt", "generation")]
    assert [b - a for a, b in zip(before, after)] == [usage["prompt_tokens"], usage["completion_tokens"]]
    assert sample("openserve:request_success_total", model="remote-chat", finished_reason="stop") >= 2


async def test_streamed_chat_equals_a_direct_stream(via, direct):
    extra = {"stream": True, "stream_options": {"include_usage": True}, "n": 2, "logprobs": True, "top_logprobs": 2}
    ours = sse_events((await post(via, "/v1/chat/completions", chat_body("remote-chat", **extra))).text)
    theirs = sse_events((await post(direct, "/v1/chat/completions", chat_body(CHAT, **extra))).text)
    assert ours[-1] == theirs[-1] == "[DONE]"

    def content(events):
        per_choice: dict = {}
        for e in events[:-1]:
            for c in e["choices"]:
                got = per_choice.setdefault(c["index"], {"text": "", "logprobs": [], "finish": None})
                got["text"] += c["delta"].get("content") or ""
                got["logprobs"] += (c["logprobs"] or {}).get("content") or []
                got["finish"] = c["finish_reason"] or got["finish"]
        return per_choice, events[-2]["usage"]

    assert content(ours) == content(theirs)
    assert len([e for e in ours[:-1] if e["choices"] and e["choices"][0]["delta"].get("content")]) > 3  # streamed


async def test_completions_with_logprobs_equal_a_direct_call(via, direct):
    body = {"prompt": ["abc", "de"], "logprobs": 2, "temperature": 0, "max_tokens": 8}
    ours = await post(via, "/v1/completions", {"model": "remote-chat", **body})
    theirs = await post(direct, "/v1/completions", {"model": CHAT, **body})
    assert without_ids(ours.json()) == without_ids(theirs.json())


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_embeddings_equal_a_direct_call(via, direct, encoding):
    inputs = ["one", "three words here", "x"]
    ours = (await post(via, "/v1/embeddings", {"model": "remote-embed", "input": inputs,
                                               "encoding_format": encoding})).json()
    theirs = (await post(direct, "/v1/embeddings", {"model": EMBED, "input": inputs,
                                                    "encoding_format": encoding})).json()
    assert ours["data"] == theirs["data"] and ours["usage"] == theirs["usage"]


async def test_images_and_speech_equal_direct_calls(via, direct):
    image = {"prompt": "a red square", "size": "64x64", "n": 2, "seed": 5}
    ours = (await post(via, "/v1/images/generations", {"model": "remote-image", **image})).json()
    theirs = (await post(direct, "/v1/images/generations", {"model": IMAGE, **image})).json()
    assert [d["b64_json"] for d in ours["data"]] == [d["b64_json"] for d in theirs["data"]]
    assert base64.b64decode(ours["data"][0]["b64_json"]).startswith(b"\x89PNG")
    speech = {"input": "hello there", "voice": "alloy", "response_format": "wav"}
    ours = await post(via, "/v1/audio/speech", {"model": "remote-speech", **speech})
    theirs = await post(direct, "/v1/audio/speech", {"model": SPEECH, **speech})
    assert ours.content == theirs.content and ours.headers["content-type"] == theirs.headers["content-type"]


async def test_the_upstreams_4xx_reaches_the_caller_and_a_wrong_remote_model_is_a_502(via, direct, gateway):
    bad_voice = {"input": "hi", "voice": "nobody", "response_format": "wav"}
    ours = await post(via, "/v1/audio/speech", {"model": "remote-speech", **bad_voice})
    theirs = await post(direct, "/v1/audio/speech", {"model": SPEECH, **bad_voice})
    assert ours.status_code == theirs.status_code == 400
    assert ours.json()["error"]["message"] == theirs.json()["error"]["message"]
    assert ours.json()["error"]["param"] == "voice"
    missing = await post(via, "/v1/chat/completions", chat_body("remote-missing"))
    assert missing.status_code == 502 and missing.json()["error"]["code"] == "upstream_not_found"
    assert gateway.circuit("remote-speech") == "closed"  # the remote answered: no failure


async def test_a_caller_leaving_mid_stream_hangs_up_on_the_upstream_which_aborts(gateway, upstream):
    upstream.fakes.chat.engine.hold_after(5)  # the reply cannot finish before the caller leaves
    text = "a reply far longer than five tokens"
    body = json.dumps({"model": "remote-chat", "messages": [{"role": "user", "content": text}],
                       "stream": True}).encode()
    await leave_mid_stream(gateway.app, "/v1/chat/completions", body, timeout_s=CALL_DEADLINE_S)
    aborted = await upstream.fakes.chat.wait_aborted(1)
    assert aborted == [f"{upstream.fakes.chat.requests[-1].request_id}-0"]
    assert next(s for s in gateway.pool.states() if s["name"] == "remote-chat")["in_flight"] == 0


# --- faults --------------------------------------------------------------------------------------------------------

FAULTS = {  # fault -> (how to inject it, the status a caller gets while the circuit is still closed)
    "refused": (None, 503),
    "500": ({"mode": "status", "status": 500}, 502),
    "hang": ({"mode": "hang"}, 504),
    "slow-first-byte": ({"mode": "slow", "delay_s": 3 * READ_TIMEOUT_S}, 504),
    "cut-mid-stream": ({"mode": "cut", "cut_after": 2}, 502),
}


async def inject(upstream: Upstream, fault: str) -> None:
    setting, _ = FAULTS[fault]
    if setting is None:
        await upstream.stop()
    else:
        for key, value in setting.items():
            setattr(upstream.faults, key, value)


async def heal(upstream: Upstream) -> None:
    upstream.faults.mode = "ok"
    upstream.faults.release.set()
    if upstream._server is None:
        await upstream.start()


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_opens_the_circuit_then_503_fallback_and_recovery(via, upstream, gateway, fault):
    await inject(upstream, fault)
    _, status = FAULTS[fault]
    for attempt in range(FAILURES):  # 1. failures while closed: each caller gets the fault's status, in time
        started = time.monotonic()
        r = await post(via, "/v1/chat/completions", chat_body("remote-chat"))
        assert r.status_code == status, r.text
        assert time.monotonic() - started < 2 * READ_TIMEOUT_S + 1
        expected = "open" if attempt == FAILURES - 1 else "closed"
        assert gateway.circuit("remote-chat") == expected

    calls = len(upstream.faults.calls)  # 2. open: 503 + Retry-After at once, the upstream is not called
    r = await post(via, "/v1/chat/completions", chat_body("remote-chat"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "circuit_open", r.text
    assert 1 <= int(r.headers["retry-after"]) <= OPEN_S
    assert len(upstream.faults.calls) == calls
    metrics = (await via.get("/metrics")).text  # the state shows in /metrics (and /admin/upstreams)
    assert 'openserve:upstream_circuit_state{model="remote-chat",state="open"} 1.0' in metrics
    assert 'openserve:upstream_circuit_state{model="remote-chat",state="closed"} 0.0' in metrics

    for _ in range(FAILURES):  # 3. the guarded model's own circuit opens the same way ...
        await post(via, "/v1/chat/completions", chat_body("guarded-chat"))
    assert gateway.circuit("guarded-chat") == "open"
    answered = len(gateway.local.chat.requests)
    r = await post(via, "/v1/chat/completions", chat_body("guarded-chat"))  # ... and its fallback answers
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hello there"
    assert len(gateway.local.chat.requests) == answered + 1

    await heal(upstream)  # 4. the upstream is back: after open_s one probe passes and closes the circuit
    gateway.clock.now += OPEN_S
    assert gateway.circuit("remote-chat") == "half_open"
    r = await post(via, "/v1/chat/completions", chat_body("remote-chat"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hello there"
    assert gateway.circuit("remote-chat") == "closed"
    assert sample("openserve:upstream_circuit_state", model="remote-chat", state="closed") == 1


async def test_a_stream_cut_in_the_middle_ends_with_an_error_event_and_counts_as_a_failure(via, upstream, gateway):
    upstream.faults.mode, upstream.faults.cut_after = "cut", 3
    r = await post(via, "/v1/chat/completions", chat_body("remote-chat", stream=True))
    events = sse_events(r.text)
    assert r.status_code == 200 and events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "error" in events[-1] and "cut off" in events[-1]["error"]["message"]
    assert next(s for s in gateway.pool.states() if s["name"] == "remote-chat")["circuit"]["consecutive_failures"] == 1


async def test_only_failures_before_the_first_byte_are_retried(via, upstream):
    upstream.faults.mode = "status"
    await post(via, "/v1/chat/completions", chat_body("remote-chat"))
    assert upstream.faults.calls == ["/v1/chat/completions"]  # a 500 is an answer: sent once
    upstream.faults.calls.clear()
    upstream.faults.mode, upstream.faults.delay_s = "slow", 3 * READ_TIMEOUT_S
    await post(via, "/v1/chat/completions", chat_body("remote-chat"))
    assert upstream.faults.calls == ["/v1/chat/completions"]  # a read timeout: the remote may be working on it


async def test_an_overloaded_upstream_is_a_429_its_fallback_answers_and_the_circuit_stays_closed(via, upstream,
                                                                                                 gateway):
    upstream.faults.mode, upstream.faults.status = "status", 429
    r = await post(via, "/v1/chat/completions", chat_body("remote-chat"))
    assert r.status_code == 429 and r.headers["retry-after"] == "7"  # the upstream's own Retry-After
    r = await post(via, "/v1/chat/completions", chat_body("guarded-chat"))
    assert r.status_code == 200 and len(gateway.local.chat.requests) == 1
    assert gateway.circuit("remote-chat") == gateway.circuit("guarded-chat") == "closed"


async def test_health_checks_open_an_idle_circuit_and_half_open_it_when_the_upstream_is_back(upstream):
    pool = UpstreamPool(clock=Clock())
    spec = upstream_spec("remote-embed", EMBED, "embedding", upstream.base_url)
    spec = spec.model_copy(update={"upstream": spec.upstream.model_copy(update={"health_check_s": 5.0})})
    client = pool.client(spec)
    model = pool.models()[0]
    await pool.tick()
    assert model.health["ok"] is True and upstream.faults.calls == ["/v1/models"]
    await upstream.stop()
    for _ in range(FAILURES):
        pool.clock.now += 5
        await pool.tick()
    assert model.breaker.state == "open" and model.health["ok"] is False and "GET /models" in model.health["error"]
    await upstream.start()
    pool.clock.now += 5
    await pool.tick()
    assert model.breaker.state == "half_open"
    vectors = (await client.embed(["a", "bb"])).vectors
    assert model.breaker.state == "closed" and vectors.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    await pool.close()
