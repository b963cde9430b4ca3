"""/admin and /v1 over a registry in trouble (real SQLite files): a locked database is a 503 with Retry-After within
the registry's bound, and a row that cannot be read is listed with its error while every other model is served."""
import sqlite3
import time

import pytest

from tests.integration.test_admin_api import CHAT, assert_error, client_for, ready
from tests.registry_fakes import admin_stack

BOUND_S = 0.5
SLACK_S = 5.0


@pytest.fixture
async def stack(tmp_path):
    s = admin_stack(str(tmp_path / "registry.db"), registry_timeout_s=BOUND_S)
    s.db = str(tmp_path / "registry.db")
    yield s
    await s.controller.wait_idle()
    s.store.close()


@pytest.fixture
async def http(stack):
    async with client_for(stack.app) as c:
        yield c


async def test_a_locked_registry_is_a_503_with_retry_after_and_reads_go_on(stack, http):
    assert (await http.post("/admin/models", json={**CHAT, "deploy": False})).status_code == 201
    holder = sqlite3.connect(stack.db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        r = await http.post("/admin/models", json={"name": "emb", "task": "embedding", "source": "fake:"})
        assert time.monotonic() - started < BOUND_S + SLACK_S
        assert_error(r, 503, code="registry_unavailable")
        assert r.headers["retry-after"] == "2" and "database is locked" in r.json()["error"]["message"]
        assert_error(await http.post(f"/admin/models/{CHAT['name']}/deploy"), 503, code="registry_unavailable")
        r = await http.get("/admin/models")  # WAL: reads do not wait for the writer
        assert (r.status_code, [e["name"] for e in r.json()["data"]]) == (200, [CHAT["name"]])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    r = await http.post("/admin/models", json={"name": "emb", "task": "embedding", "source": "fake:"})
    assert r.status_code == 201, r.text


async def test_a_row_that_cannot_be_read_is_listed_with_its_error_and_the_rest_is_served(stack, http):
    await http.post("/admin/models", json=CHAT)
    await http.post("/admin/models", json={"name": "emb", "task": "embedding", "source": "fake:"})
    await ready(stack, http, "emb")
    await ready(stack, http, CHAT["name"])
    with sqlite3.connect(stack.db) as conn:  # edited by hand, or written by another release
        conn.execute("UPDATE models SET options = '{broken' WHERE name = 'emb'")
        conn.execute("UPDATE registry_state SET generation = generation + 1")  # the ingress reloads its routes
    r = await http.get("/admin/models")
    assert r.status_code == 200
    assert [e["name"] for e in r.json()["data"]] == [CHAT["name"]]
    [bad] = r.json()["invalid"]
    assert (bad["object"], bad["name"]) == ("registry.invalid_model", "emb") and "JSONDecodeError" in bad["error"]
    await stack.routes.refresh()
    assert [m["id"] for m in (await http.get("/v1/models")).json()["data"]] == [CHAT["name"]]
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
    r = await http.get("/admin/models/emb")
    assert_error(r, 500, code="registry_entry_invalid")
    assert r.json()["error"]["message"].startswith("The registry entry `emb` cannot be read (JSONDecodeError")
    assert (await http.delete("/admin/models/emb")).json() == {"id": "emb", "object": "model", "deleted": True}
    assert (await http.get("/admin/models")).json()["invalid"] == []
