"""The Ollama API in-process: the official `ollama` client, unchanged (only its HTTP transport is the app), and raw
HTTP for the shapes, options and errors."""
import json

import httpx
import numpy as np
import ollama
import pytest

from serving.api.app import build_app
from tests.api_fakes import CHAT, EMBED, app, assert_error, chat_prompt_tokens, fake_vector, fakes, http  # noqa: F401

USER = [{"role": "user", "content": "hello there"}]
REPLY = "hello there"  # the fake engine answers with the last user message (temperature 0)
GREEDY = {"temperature": 0}


@pytest.fixture
async def client(app):
    async with ollama.AsyncClient(host="http://test", transport=httpx.ASGITransport(app=app)) as c:
        yield c


def lines(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines() if line]


async def test_list_shows_chat_and_embedding_models_with_ollama_names(client):
    listed = await client.list()
    assert [m.model for m in listed.models] == [f"{CHAT}:latest", f"{EMBED}:latest"]
    assert listed.models[0].details.family == "chat" and len(listed.models[0].digest) == 64
    running = await client.ps()
    assert [m.model for m in running.models] == [f"{CHAT}:latest", f"{EMBED}:latest"]


async def test_chat_whole_and_streamed_by_name_and_tagged_name(client, fakes):
    reply = await client.chat(model=CHAT, messages=USER, options=GREEDY)
    assert (reply.message.role, reply.message.content, reply.done, reply.done_reason) == ("assistant", REPLY,
                                                                                         True, "stop")
    assert reply.prompt_eval_count == chat_prompt_tokens(USER) and reply.eval_count == len(REPLY) + 1
    assert reply.total_duration >= reply.prompt_eval_duration + reply.eval_duration > 0
    parts = [p async for p in await client.chat(model=f"{CHAT}:latest", messages=USER, options=GREEDY, stream=True)]
    assert "".join(p.message.content for p in parts) == REPLY and len(parts) > 5
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == "stop" and parts[-1].eval_count == len(REPLY) + 1


async def test_generate_uses_the_chat_template_with_system_or_the_raw_prompt(client, fakes):
    reply = await client.generate(model=CHAT, prompt="why is the sky blue", system="be brief", options=GREEDY)
    assert reply.response == "why is the sky blue" and reply.done_reason == "stop"
    assert fakes.chat.requests[-1].messages == [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "why is the sky blue"}]
    parts = [p async for p in await client.generate(model=CHAT, prompt="abcdef", raw=True, stream=True,
                                                    options={**GREEDY, "num_predict": 3})]
    assert "".join(p.response for p in parts) == "abc" and parts[-1].done_reason == "length"
    assert fakes.chat.requests[-1].prompt == "abcdef" and fakes.chat.requests[-1].messages is None


async def test_options_map_onto_the_engine_with_ollamas_defaults(http, fakes):
    await http.post("/api/chat", json={"model": CHAT, "messages": USER, "stream": False})
    params = fakes.chat.requests[-1].params
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (0.8, 0.9, 40, None)
    options = {"temperature": 0.3, "top_p": 0.5, "top_k": 0, "seed": 7, "stop": ["x"], "num_predict": 12,
               "num_ctx": 4096, "num_thread": 2, "repeat_penalty": 1.0, "presence_penalty": 0.5}
    r = await http.post("/api/chat", json={"model": CHAT, "messages": USER, "stream": False, "options": options})
    assert r.status_code == 200, r.text
    params = fakes.chat.requests[-1].params
    assert (params.temperature, params.top_p, params.top_k, params.seed, params.stop, params.max_tokens,
            params.presence_penalty) == (0.3, 0.5, -1, 7, ["x"], 12, 0.5)


async def test_seeded_sampling_is_reproducible(client):
    a = await client.generate(model=CHAT, prompt="hi", options={"seed": 11, "temperature": 1.0})
    b = await client.generate(model=CHAT, prompt="hi", options={"seed": 11, "temperature": 1.0})
    assert a.response == b.response and a.response.startswith("hi ")


async def test_loading_a_model_with_no_messages_or_prompt_answers_at_once(http):
    r = await http.post("/api/chat", json={"model": CHAT, "messages": []})
    assert r.json()["done_reason"] == "load" and r.json()["message"]["content"] == ""
    r = await http.post("/api/generate", json={"model": CHAT})
    assert (r.json()["done"], r.json()["done_reason"], r.json()["response"]) == (True, "load", "")


async def test_embed_and_embeddings(client, http, fakes):
    reply = await client.embed(model=EMBED, input=["a", "three words here"])
    vectors = np.array(reply.embeddings)
    np.testing.assert_allclose(vectors, np.stack([fake_vector("a", 8), fake_vector("three words here", 8)]),
                               rtol=1e-6)
    assert reply.prompt_eval_count == 4
    cut = np.array((await client.embed(model=f"{EMBED}:latest", input="a", dimensions=3)).embeddings[0])
    np.testing.assert_allclose(cut, fake_vector("a", 8)[:3] / np.linalg.norm(fake_vector("a", 8)[:3]), rtol=1e-6)
    single = await client.embeddings(model=EMBED, prompt="a")
    np.testing.assert_allclose(single.embedding, fake_vector("a", 8), rtol=1e-6)
    assert (await http.post("/api/embeddings", json={"model": EMBED, "prompt": ""})).json() == {"embedding": []}


async def test_show_and_version(client, http):
    shown = await client.show(CHAT)
    assert shown.capabilities == ["completion"] and shown.details.family == "chat"
    assert shown.modelinfo["general.basename"] == CHAT
    assert (await client.show(f"{EMBED}:latest")).capabilities == ["embedding"]
    assert (await http.post("/api/show", json={"name": EMBED})).status_code == 200  # the field's older name
    assert (await http.get("/api/version")).json()["version"].count(".") == 2
    assert (await http.get("/")).text == "Ollama is running" and (await http.head("/")).status_code == 200


def assert_ollama_error(r: httpx.Response, status: int, needle: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and needle in body["error"], body


@pytest.mark.parametrize("path, body, status, needle", [
    ("/api/chat", {"model": "nope", "messages": USER}, 404, 'model "nope" not found'),
    ("/api/chat", {"messages": USER}, 400, "model"),
    ("/api/chat", {"model": CHAT, "messages": "hi"}, 400, "messages"),
    ("/api/chat", {"model": CHAT, "messages": USER, "options": {"mirostat": 2}}, 400, "mirostat"),
    ("/api/chat", {"model": CHAT, "messages": USER, "options": {"no_such_option": 1}}, 400, "no_such_option"),
    ("/api/chat", {"model": CHAT, "messages": USER, "options": {"num_predict": 0}}, 400, "num_predict"),
    ("/api/chat", {"model": CHAT, "messages": USER, "format": "json"}, 400, "format"),
    ("/api/chat", {"model": CHAT, "messages": USER, "tools": [{"type": "function"}]}, 400, "Tool"),
    ("/api/chat", {"model": CHAT, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, 400, "Images"),
    ("/api/chat", {"model": CHAT, "messages": USER, "think": True}, 400, "thinking"),
    ("/api/generate", {"model": CHAT, "prompt": "x", "suffix": "y"}, 400, "suffix"),
    ("/api/generate", {"model": EMBED, "prompt": "x"}, 400, "embedding model"),
    ("/api/embed", {"model": CHAT, "input": "x"}, 400, "chat model"),
    ("/api/embed", {"model": EMBED, "input": ["a", ""]}, 400, "empty"),
    ("/api/show", {}, 400, "model is required"),
])
async def test_bad_input_is_a_4xx_in_ollamas_shape(http, path, body, status, needle):
    assert_ollama_error(await http.post(path, json=body), status, needle)


async def test_the_client_raises_response_error_with_the_status(client):
    with pytest.raises(ollama.ResponseError) as raised:
        await client.chat(model="nope", messages=USER)
    assert raised.value.status_code == 404 and 'model "nope" not found' in raised.value.error


async def test_an_error_mid_stream_is_an_error_line(http, client):
    r = await http.post("/api/chat", json={"model": CHAT, "messages": [{"role": "user", "content": "FAIL_MIDSTREAM"}]})
    objects = lines(r)
    assert objects[0]["message"]["content"] == "F" and set(objects[-1]) == {"error"}
    assert "secret" not in objects[-1]["error"]  # an internal error's details stay in the log
    with pytest.raises(ollama.ResponseError):
        async for _ in await client.generate(model=CHAT, prompt="FAIL_MIDSTREAM", stream=True):
            pass


async def test_auth_and_body_limit_errors_take_the_routes_shape(fakes):
    guarded = build_app(fakes.router(), api_keys=["k"], max_request_bytes=2048)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://test") as h:
        assert_ollama_error(await h.get("/api/tags"), 401, "API key")
        assert_error(await h.get("/v1/models"), 401, "authentication_error", code="invalid_api_key")
        big = {"model": CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
        r = await h.post("/api/chat", json=big, headers={"Authorization": "Bearer k"})
        assert_ollama_error(r, 413, "too large")
        assert_ollama_error(await h.get("/api/nothing", headers={"Authorization": "Bearer k"}), 404, "Invalid URL")
    async with ollama.AsyncClient(host="http://test", transport=httpx.ASGITransport(app=guarded),
                                  headers={"Authorization": "Bearer k"}) as c:
        assert len((await c.list()).models) == 2


async def test_keys_limits_and_metrics_apply_to_the_ollama_api(tmp_path):
    """The whole ingress app: an API key's model allow-list and limits, and the request metrics, as for /v1."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.integration.test_operate_api import Stack

    stack = Stack(tmp_path)
    try:
        key = await stack.create_key(models=[EMBED], limits={"requests_per_minute": 3})  # every request counts
        async with stack.http(authorization=f"Bearer {key['key']}") as h:
            assert [m["model"] for m in (await h.get("/api/tags")).json()["models"]] == [f"{EMBED}:latest"]
            assert_ollama_error(await h.post("/api/chat", json={"model": CHAT, "messages": USER}), 404, "not found")
            assert (await h.post("/api/embed", json={"model": EMBED, "input": "a"})).status_code == 200
            limited = await h.post("/api/embed", json={"model": EMBED, "input": "b"})
            assert_ollama_error(limited, 429, "")
            assert int(limited.headers["retry-after"]) >= 1
        async with stack.http() as h:
            assert_ollama_error(await h.get("/api/tags"), 401, "API key")
            metrics = (await h.get("/metrics")).text
        counted = {(s.labels["endpoint"], s.labels["model"], s.labels["status"]): s.value
                   for family in text_string_to_metric_families(metrics) if family.name == "openserve:requests"
                   for s in family.samples if s.name == "openserve:requests_total"}
        assert counted[("/api/embed", EMBED, "200")] == 1 and counted[("/api/tags", "", "401")] == 1
    finally:
        stack.fakes.close()
        stack.store.close()
