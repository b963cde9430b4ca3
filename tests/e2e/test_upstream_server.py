"""A gateway in front of a second server: two real `openserve up` processes (real local Ray each). The upstream
serves fake models behind an API key; the gateway's upstream models reach them with the key it reads from the
environment variable its configuration names. Through the gateway, streamed chat and embeddings equal direct
calls; when the upstream goes away, callers get 503 + Retry-After and the fallback answers."""
from __future__ import annotations

import os
import tempfile

import httpx
import numpy as np
import openai
import pytest
import yaml

from tests.e2e.server_process import ServerProcess, free_port

pytestmark = pytest.mark.ray

KEY_ENV = "OPENSERVE_E2E_UPSTREAM_KEY"
KEY = "sk-upstream-e2e-4f1c"
MESSAGES = [{"role": "user", "content": "hello from the gateway"}]


def write_config(models: list[dict], **server) -> str:
    fd, path = tempfile.mkstemp(prefix="osv-", suffix=".yaml", dir="/tmp")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"server": {"routes_refresh_s": 0.5, **server}, "models": models}, f)
    return path


@pytest.fixture(scope="module")
def servers():
    upstream_config = write_config([
        {"name": "fake-chat", "task": "chat", "source": "fake:", "resources": {"num_cpus": 0.1}},
        {"name": "fake-embed", "task": "embedding", "source": "fake:", "resources": {"num_cpus": 0.1}},
    ], api_keys=[KEY])
    upstream_port = free_port()
    base_url = f"http://127.0.0.1:{upstream_port}/v1"
    remote = {"base_url": base_url, "api_key_env": KEY_ENV, "retries": 1, "read_timeout_s": 30,
              "health_check_s": 0, "breaker": {"failures": 2, "open_s": 60}}
    gateway_config = write_config([
        {"name": "remote-chat", "task": "chat", "upstream": {**remote, "model": "fake-chat"},
         "fallbacks": ["local-chat"]},
        {"name": "remote-embed", "task": "embedding", "upstream": {**remote, "model": "fake-embed"}},
        {"name": "local-chat", "task": "chat", "source": "fake:", "resources": {"num_cpus": 0.1}},
    ])
    started = []
    try:
        started.append(ServerProcess(upstream_config, port=upstream_port))
        started.append(ServerProcess(gateway_config, env={KEY_ENV: KEY}))
        yield started
    finally:
        for server in started:
            server.cleanup()
        os.unlink(upstream_config), os.unlink(gateway_config)


@pytest.fixture(scope="module")
def upstream(servers):
    return openai.OpenAI(base_url=servers[0].base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def gateway(servers):
    return openai.OpenAI(base_url=servers[1].base_url + "/v1", api_key="x", max_retries=0, timeout=60)


def streamed(client: openai.OpenAI, model: str) -> tuple[list[str], str | None, tuple[int, int]]:
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
    return deltas, finish, (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens)


def test_upstream_models_are_listed_and_deployed_without_replicas(servers, gateway):
    assert {m.id for m in gateway.models.list().data} == {"remote-chat", "remote-embed", "local-chat"}
    entry = httpx.get(servers[1].base_url + "/admin/models/remote-chat").json()
    assert (entry["status"], entry["config"]["source"]) == ("ready", "upstream")
    assert KEY not in httpx.get(servers[1].base_url + "/admin/models").text


def test_streamed_chat_through_the_gateway_equals_the_direct_stream(upstream, gateway):
    ours, theirs = streamed(gateway, "remote-chat"), streamed(upstream, "fake-chat")
    assert ours == theirs and "".join(ours[0]) == "hello from the gateway" and len(ours[0]) > 5


def test_embeddings_through_the_gateway_equal_direct_calls(upstream, gateway):
    texts = ["a sentence", "another, longer sentence", "x"]
    ours = gateway.embeddings.create(model="remote-embed", input=texts)
    theirs = upstream.embeddings.create(model="fake-embed", input=texts)
    np.testing.assert_array_equal([d.embedding for d in ours.data], [d.embedding for d in theirs.data])
    assert ours.usage.prompt_tokens == theirs.usage.prompt_tokens


def test_when_the_upstream_goes_away_callers_get_503_and_the_fallback_answers(servers, gateway):
    assert servers[0].stop() is not None  # connections to its port are refused from now on
    for _ in range(2):  # the breaker's `failures`
        with pytest.raises(openai.InternalServerError) as refused:
            gateway.embeddings.create(model="remote-embed", input=["x"])
        assert refused.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as open_circuit:
        gateway.embeddings.create(model="remote-embed", input=["x"])
    assert open_circuit.value.status_code == 503 and open_circuit.value.body["code"] == "circuit_open"
    assert int(open_circuit.value.response.headers["retry-after"]) >= 1
    state = httpx.get(servers[1].base_url + "/admin/upstreams/remote-embed").json()
    assert state["circuit"]["state"] == "open" and state["circuit"]["opened_total"] == 1
    reply = gateway.chat.completions.create(model="remote-chat", messages=MESSAGES, temperature=0)
    assert reply.choices[0].message.content == "hello from the gateway"  # local-chat, the fallback
