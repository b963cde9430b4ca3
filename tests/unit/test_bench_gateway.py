"""benchmarks.gateway's raw-proxy stack: it forwards each POST's path and body to the upstream and returns the
upstream's status and body unchanged."""
from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import TestServer

from benchmarks.gateway import RawProxy


async def call(app, path: str, body: bytes, chunks: int = 1) -> tuple[int, bytes]:
    """One POST through the ASGI app, the body in `chunks` messages; (status, body) of the answer."""
    size = -(-len(body) // chunks)
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": path, "headers": []}, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_raw_proxy_forwards_path_and_body_and_returns_the_upstreams_answer():
    seen = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path, await request.read()))
        status = 200 if request.path == "/v1/embeddings" else 404
        return web.json_response({"echo": json.loads(await request.read())}, status=status)

    upstream = web.Application()
    upstream.router.add_post("/{tail:.*}", handler)
    async with TestServer(upstream) as server:
        proxy = RawProxy(str(server.make_url("/v1")))
        body = json.dumps({"model": "noop", "input": ["x" * 100]}).encode()
        try:
            answer = await call(proxy, "/v1/embeddings", body, chunks=3)
            status, _ = await call(proxy, "/v1/other", b"{}")
        finally:
            await proxy.session.close()
    assert answer == (200, json.dumps({"echo": json.loads(body)}).encode())
    assert status == 404
    assert seen == [("/v1/embeddings", body), ("/v1/other", b"{}")]
