"""Bounded under load, on a real server (real local Ray) with fake backends: 500 streaming clients for 60 s; each
modality at 4x what it admits; requests past their deadlines. One server for the module (about 3-5 minutes on 2
cores, 60 s of it the load)."""
from __future__ import annotations

import asyncio
import json
import os
import time

import aiohttp
import httpx
import pytest

from tests.e2e.server_process import REPO, ServerProcess, wait_for
from tests.e2e.sse_load import LoadResult, refusal_problem, stream_problem, streaming_clients

pytestmark = pytest.mark.ray

CONFIG = os.path.join(REPO, "tests", "e2e", "fake_models.yaml")
LOAD_CLIENTS, LOAD_SECONDS = 500, 60
FAST = {"source": "fake:", "resources": {"num_cpus": 0.1}, "queue_timeout_s": 20, "request_timeout_s": 30}
ONE_AT_A_TIME = {"max_batch_size": 1, "batch_wait_timeout_s": 0}
# Each admits 8 requests (4 in the replica, or 2 for the unary ones, and the rest waiting at the ingress).
OVERLOADED = {
    "tight-chat": {"task": "chat", "options": {"step_delay": 0.02, "max_running": 2, "max_queued": 2},
                   "max_queued_requests": 4, **FAST},
    **{f"tight-{task}": {"task": task, "options": {"delay_s": 0.1}, "batching": ONE_AT_A_TIME,
                         "max_ongoing_requests": 2, "max_queued_requests": 6, **FAST}
       for task in ("embedding", "image", "speech")},
}
SLOW = {
    # One request at a time, 10 tokens a second: a 60-character answer takes 6 s, past its 2.5 s deadline.
    "slow-chat": {"task": "chat", "source": "fake:", "resources": {"num_cpus": 0.1}, "queue_timeout_s": 1,
                  "request_timeout_s": 2.5, "options": {"step_delay": 0.1, "max_running": 1, "max_queued": 0}},
    "slow-embedding": {"task": "embedding", "source": "fake:", "resources": {"num_cpus": 0.1},
                       "options": {"delay_s": 10}, "request_timeout_s": 1, "batching": ONE_AT_A_TIME},
}


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(CONFIG)
    yield srv
    srv.cleanup()


def test_500_streaming_clients_for_60_s_each_stream_complete_or_refused_cleanly(server):
    baseline_mb = server.pss_mb()
    result = asyncio.run(streaming_clients(server.base_url, "fake-chat", LOAD_CLIENTS, LOAD_SECONDS, timeout_s=120))
    print(f"load: {result.completed} streams complete, {result.refused} refused, statuses {result.statuses}")
    assert result.failures == [], f"{len(result.failures)} failures, e.g. {result.failures[:5]}"
    assert result.server_errors() == 0
    assert result.completed >= LOAD_CLIENTS  # every client got through at least once on average
    settled_mb = wait_for(lambda: (mb := server.pss_mb()) <= 1.1 * baseline_mb and mb, 60,
                          f"server PSS back within 10% of {baseline_mb:.0f} MB", seen=server.pss_mb)
    print(f"server PSS: {baseline_mb:.0f} MB before, {settled_mb:.0f} MB after")
    assert settled_mb <= 1.1 * baseline_mb


@pytest.fixture(scope="module")
def registered(server):
    """The models above, registered through the admin API and ready."""
    with httpx.Client(base_url=server.base_url + "/admin", timeout=60, headers={"content-type": "application/json"}) as admin:
        for name, spec in {**OVERLOADED, **SLOW}.items():
            assert admin.post("/models", json={"name": name, **spec}).status_code == 201
        entries = lambda: [admin.get(f"/models/{name}").json() for name in {**OVERLOADED, **SLOW}]
        wait_for(lambda: all(e["status"] == "ready" for e in entries()), 600, "the models ready",
                 seen=lambda: [(e["name"], e["status"], e["error"]) for e in entries() if e["status"] != "ready"])
    return server


def request_for(task: str, model: str, i: int) -> tuple[str, dict]:
    body = {
        "chat": {"messages": [{"role": "user", "content": f"overload {i}"}], "stream": True, "temperature": 0},
        "embedding": {"input": f"overload {i}"},
        "image": {"prompt": f"overload {i}", "size": "64x64"},
        "speech": {"input": f"overload {i}", "voice": "alloy", "response_format": "wav"},
    }[task]
    path = {"chat": "chat/completions", "embedding": "embeddings", "image": "images/generations",
            "speech": "audio/speech"}[task]
    return f"/v1/{path}", {"model": model, **body}


async def answer_problem(task: str, response: aiohttp.ClientResponse, i: int) -> str | None:
    if task == "chat":
        return await stream_problem(response, f"overload {i}")
    if task == "speech":
        return None if (await response.read())[:4] == b"RIFF" else "not a WAV"
    data = (await response.json())["data"]
    return None if len(data) == 1 else f"{len(data)} results"


async def burst(base_url: str, task: str, model: str, count: int) -> tuple[LoadResult, float]:
    """`count` concurrent requests; (what they got, the longest any took)."""
    result, longest = LoadResult(), 0.0

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal longest
        path, body = request_for(task, model, i)
        start = time.monotonic()
        async with session.post(base_url + path, json=body) as response:
            result.count(response.status)
            if response.status == 429:
                problem = await refusal_problem(response)
                result.refused += problem is None
            elif response.status == 200:
                problem = await answer_problem(task, response, i)
                result.completed += problem is None
            else:
                problem = f"status {response.status}: {(await response.text())[:300]}"
        longest = max(longest, time.monotonic() - start)
        if problem:
            result.failures.append(problem)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        await asyncio.gather(*(one(session, i) for i in range(count)))
    return result, longest


@pytest.mark.parametrize("model", list(OVERLOADED))
def test_each_modality_at_4x_what_it_admits_refuses_cleanly_and_meets_its_deadlines(registered, model):
    admitted = 8
    result, longest = asyncio.run(burst(registered.base_url, OVERLOADED[model]["task"], model, 4 * admitted))
    print(f"{model}: {result.completed} answered, {result.refused} refused, longest {longest:.1f} s")
    assert result.failures == [] and result.server_errors() == 0
    assert result.refused >= 2 * admitted and result.completed >= 1
    assert longest < OVERLOADED[model]["request_timeout_s"]


def chat(base_url: str, content: str, stream: bool = False) -> httpx.Response:
    body = {"model": "slow-chat", "messages": [{"role": "user", "content": content}], "stream": stream,
            "temperature": 0}
    return httpx.post(base_url + "/v1/chat/completions", json=body, timeout=30)


def test_a_request_past_its_deadline_is_a_504_and_its_work_stops(registered):
    start = time.monotonic()
    late = chat(registered.base_url, "x" * 60)
    assert late.status_code == 504 and late.headers["retry-after"], late.text
    assert late.json()["error"]["code"] == "request_timeout" and time.monotonic() - start < 10
    # The replica holds one request; had the late one kept running, this one would wait past its 1 s queue deadline.
    assert chat(registered.base_url, "hi").json()["choices"][0]["message"]["content"] == "hi"


def test_a_stream_past_its_deadline_ends_with_an_error_event(registered):
    late = chat(registered.base_url, "y" * 60, stream=True)
    assert late.status_code == 200
    events = [json.loads(line.removeprefix("data: ")) for line in late.text.splitlines() if line.startswith("data: ")]
    assert events[1]["choices"][0]["delta"]["content"] == "y"  # it had started
    assert events[-1]["error"]["code"] == "request_timeout"  # and ends with the error, no [DONE]


def test_a_request_no_replica_takes_is_a_503_at_the_queue_deadline(registered):
    body = {"model": "slow-chat", "messages": [{"role": "user", "content": "z" * 20}], "stream": True}
    with httpx.stream("POST", registered.base_url + "/v1/chat/completions", json=body, timeout=30) as running:
        lines = running.iter_lines()  # held: dropping the iterator would close the connection
        next(lines)  # the stream has begun: the replica's one slot is taken
        waiting = chat(registered.base_url, "hi")
    assert waiting.status_code == 503 and waiting.headers["retry-after"] == "5"
    assert waiting.json()["error"]["code"] == "queue_timeout"
    # The stream's client left: its slot is freed once the cancel has reached the engine (a 429 until then).
    wait_for(lambda: chat(registered.base_url, "hi").status_code == 200, 10, "the freed slot answering", poll_s=0.2)


def test_a_unary_call_past_its_deadline_is_a_504(registered):
    start = time.monotonic()
    r = httpx.post(registered.base_url + "/v1/embeddings", json={"model": "slow-embedding", "input": "x"}, timeout=30)
    assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - start < 8  # answered at its 1 s deadline, not after the model's 10 s
