"""Upstream models in the registry, in-process: registered, listed, aliased, changed and removed like any model,
"ready" without a Serve application, their key read from the environment (never stored), their fallbacks used."""
import os

import pytest

from serving.metrics.definitions import REGISTRY
from tests.api_fakes import CHAT
from tests.integration.test_admin_api import client_for
from tests.registry_fakes import admin_stack
from tests.upstream_fakes import Upstream, upstream  # noqa: F401

USER = [{"role": "user", "content": "hello there"}]
KEY_ENV = "OPENSERVE_TEST_UPSTREAM_KEY"
SECRET = "sk-upstream-test-0123456789"


@pytest.fixture
async def stack(tmp_path):
    s = admin_stack(str(tmp_path / "registry.db"))
    yield s
    await s.controller.wait_idle()
    await s.clients.upstreams.close()
    s.store.close()


@pytest.fixture
async def http(stack):
    async with client_for(stack.app) as c:
        yield c


def remote(upstream: Upstream, **extra) -> dict:
    return {"name": "gpt", "task": "chat", "aliases": ["gpt-4o-mini"],
            "upstream": {"base_url": upstream.base_url, "model": CHAT, "retries": 0}, **extra}


async def settled(stack, http, name: str) -> dict:
    await stack.controller.wait_idle()
    return (await http.get(f"/admin/models/{name}")).json()


async def test_registered_upstream_model_is_ready_without_a_serve_application_and_answers_by_alias(
        stack, http, upstream):
    r = await http.post("/admin/models", json=remote(upstream))
    assert r.status_code == 201, r.text
    entry = await settled(stack, http, "gpt")
    assert (entry["status"], entry["config"]["source"]) == ("ready", "upstream")
    assert stack.ops.runs == [] and stack.ops.running == {}  # no replica: the ingress calls the remote itself
    assert [m["id"] for m in (await http.get("/v1/models")).json()["data"]] == ["gpt"]
    r = await http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": USER, "temperature": 0})
    assert r.json()["choices"][0]["message"]["content"] == "hello there"
    assert upstream.faults.calls == ["/v1/chat/completions"] and upstream.faults.authorizations == [None]
    state = (await http.get("/admin/upstreams/gpt")).json()
    assert (state["base_url"], state["remote_model"], state["circuit"]["state"]) == (upstream.base_url, CHAT, "closed")
    assert (await http.get("/admin/upstreams")).json()["data"] == [state]


async def test_the_key_comes_from_the_named_variable_and_is_stored_nowhere(stack, http, upstream, monkeypatch,
                                                                           tmp_path):
    with_key = remote(upstream)
    with_key["upstream"]["api_key_env"] = KEY_ENV
    monkeypatch.delenv(KEY_ENV, raising=False)
    r = await http.post("/admin/models", json=with_key)
    assert r.status_code == 400 and KEY_ENV in r.json()["error"]["message"], r.text
    monkeypatch.setenv(KEY_ENV, SECRET)
    assert (await http.post("/admin/models", json=with_key)).status_code == 201
    await settled(stack, http, "gpt")
    await http.post("/v1/chat/completions", json={"model": "gpt", "messages": USER})
    assert upstream.faults.authorizations == [f"Bearer {SECRET}"]
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("registry.db"))
    assert KEY_ENV.encode() in stored and SECRET.encode() not in stored
    assert SECRET not in (await http.get("/admin/models/gpt")).text + (await http.get("/admin/upstreams")).text


async def test_a_change_makes_a_new_client_and_delete_drops_it(stack, http, upstream):
    await http.post("/admin/models", json=remote(upstream))
    await settled(stack, http, "gpt")
    old = stack.routes.router.client("gpt", "chat")
    r = await http.patch("/admin/models/gpt", json={"upstream": {"read_timeout_s": 30}, "description": "remote"})
    assert r.status_code == 200 and r.json()["config"]["upstream"]["base_url"] == upstream.base_url
    entry = await settled(stack, http, "gpt")
    assert (entry["status"], entry["version"], entry["config"]["upstream"]["read_timeout_s"]) == ("ready", 2, 30)
    assert stack.clients.dropped == [old] and stack.routes.router.client("gpt", "chat") is not old
    circuit = {"model": "gpt", "state": "closed"}
    assert REGISTRY.get_sample_value("openserve:upstream_circuit_state", circuit) == 1  # the new client's
    assert (await http.delete("/admin/models/gpt")).status_code == 200
    await stack.routes.refresh()
    assert (await http.get("/admin/upstreams")).json()["data"] == []
    assert REGISTRY.get_sample_value("openserve:upstream_circuit_state", circuit) is None  # no stale series
    assert (await http.get("/admin/upstreams/gpt")).status_code == 404


async def test_a_local_fallback_answers_while_the_upstream_is_down(stack, http, upstream):
    local = {"name": "local", "task": "chat", "source": "fake:"}
    assert (await http.post("/admin/models", json=local)).status_code == 201
    assert (await http.post("/admin/models", json=remote(upstream, fallbacks=["local"]))).status_code == 201
    await settled(stack, http, "gpt")
    await upstream.stop()  # connections refused: the model is unavailable, its fallback answers
    r = await http.post("/v1/chat/completions", json={"model": "gpt", "messages": USER, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hello there"
    assert r.json()["model"] == "gpt"


async def test_bad_upstream_configurations_are_400s_naming_the_field(http, upstream):
    for bad, needle in [
        ({"base_url": "ftp://x"}, "base_url"),
        ({"base_url": upstream.base_url, "api_key_env": "sk-not-a-name!"}, "api_key_env"),
        ({"base_url": upstream.base_url, "breaker": {"failures": 0}}, "failures"),
    ]:
        r = await http.post("/admin/models", json={"name": "x", "task": "chat", "upstream": bad})
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
    both = {"name": "x", "task": "chat", "source": "fake:", "upstream": {"base_url": upstream.base_url}}
    assert (await http.post("/admin/models", json=both)).status_code == 400
    own = {"name": "x", "task": "chat", "source": "fake:", "fallbacks": ["x"]}
    assert (await http.post("/admin/models", json=own)).status_code == 400
