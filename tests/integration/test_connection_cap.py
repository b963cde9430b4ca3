"""The ingress' uvicorn with its connection cap, in-process on a real socket: a request on a connection beyond
`server.max_connections` gets a clean 503 (OpenAI error body, Retry-After, connection closed)."""
from __future__ import annotations

import asyncio
import json

import anyio
import httpx
import pytest

from serving.deployments.ingress import http_server
from tests.e2e.server_process import free_port


async def ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def until(predicate, timeout_s: float = 10.0) -> None:
    """Wait for `predicate()` to hold, polling the event loop, at most `timeout_s`."""
    with anyio.fail_after(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def capped():
    port = free_port()
    server = http_server(ok, "127.0.0.1", port, max_connections=2)
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started)
    yield server, f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_a_request_beyond_the_connection_cap_gets_a_clean_503(capped):
    server, url = capped
    idle = [await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1])) for _ in range(2)]
    await until(lambda: len(server.server_state.connections) == 2)
    async with httpx.AsyncClient() as client:
        refused = await client.get(url + "/v1/models")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
        error = json.loads(refused.content)["error"]
        assert error["type"] == "server_error" and "limit 2" in error["message"]
        for _, writer in idle:
            writer.close()
        await until(lambda: len(server.server_state.connections) == 0)
        assert (await client.get(url + "/v1/models")).status_code == 200
