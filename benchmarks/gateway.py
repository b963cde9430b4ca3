"""Gateway stacks for `python -m benchmarks overhead`: the same no-op request, proxied to a no-op upstream.

  gateway-no-ray  serving.api.app on uvicorn, its model `noop` an upstream model -> the bare no-op app (uvicorn)
  ray-gateway     `openserve up` whose model `noop` is an upstream model -> the same bare no-op app
  raw-proxy       the floor of any Python gateway: a raw ASGI app on uvicorn that forwards each POST's body to the
                  same upstream with one pooled aiohttp session and returns its answer. No routing, validation,
                  auth, metrics or breaker: what one more HTTP hop costs in Python, whatever the gateway does

The upstream is the `bare-uvicorn` floor itself, in a process of its own: each stack's `added_p50_ms` (its p50
minus the floor's, same client) is what the gateway adds to a request.

    python -m benchmarks overhead --stacks bare-uvicorn,gateway-no-ray,ray-gateway --concurrency 1,32
    python -m benchmarks overhead --stacks bare-uvicorn,raw-proxy,gateway-no-ray --concurrency 1,32 --repeat 3
"""
from __future__ import annotations

import os
import tempfile

import yaml

from benchmarks.server import ServerProcess, start_openserve, start_uvicorn

UPSTREAM_ENV = "OPENSERVE_BENCH_UPSTREAM"
MODEL = "noop"
_upstream: list[ServerProcess] = []  # the one no-op upstream every gateway stack proxies to


def upstream_url(cwd: str) -> str:
    """The no-op upstream's /v1 URL (started on first use)."""
    if not _upstream:
        _upstream.append(start_uvicorn("benchmarks.overhead:bare_app", cwd=cwd))
    return _upstream[0].base_url + "/v1"


def stop_upstream() -> None:
    while _upstream:
        _upstream.pop().stop()


def upstream_model(base_url: str) -> dict:
    """The upstream model `noop`; health checks off, so that only the benchmark's requests reach the upstream."""
    return {"name": MODEL, "task": "embedding", "upstream": {"base_url": base_url, "health_check_s": 0}}


def gateway_app():
    """uvicorn factory: the real FastAPI app whose only model is an upstream model (env OPENSERVE_BENCH_UPSTREAM)."""
    from serving.api.app import build_app
    from serving.clients import ModelCard
    from serving.config import ModelConfig
    from serving.router import ModelRouter, ServedModel
    from serving.upstream.pool import UpstreamPool

    spec = ModelConfig.model_validate(upstream_model(os.environ[UPSTREAM_ENV]))
    card = ModelCard(MODEL, "embedding", 0, metadata={"upstream": spec.upstream.base_url})
    return build_app(ModelRouter([ServedModel(card, UpstreamPool().client(spec))]))


def start_gateway_no_ray(cwd: str) -> ServerProcess:
    return start_uvicorn("benchmarks.gateway:gateway_app", factory=True, cwd=cwd,
                         env={UPSTREAM_ENV: upstream_url(cwd)})


class RawProxy:
    """ASGI app: every POST forwarded as it came (path, body, content type) to env OPENSERVE_BENCH_UPSTREAM's
    server, its status and body returned. The session is made on the first request (it needs the running loop)."""

    def __init__(self, upstream: str):
        self.origin = upstream.removesuffix("/v1")
        self.session = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        async with self.session.post(self.origin + scope["path"], data=body,
                                     headers={"content-type": "application/json"}) as response:
            answer = await response.read()
            status = response.status
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def raw_proxy_app():
    """uvicorn factory for RawProxy."""
    return RawProxy(os.environ[UPSTREAM_ENV])


def start_raw_proxy(cwd: str) -> ServerProcess:
    return start_uvicorn("benchmarks.gateway:raw_proxy_app", factory=True, cwd=cwd,
                         env={UPSTREAM_ENV: upstream_url(cwd)})


def start_ray_gateway(cwd: str) -> ServerProcess:
    handle, path = tempfile.mkstemp(prefix="gateway-", suffix=".yaml")
    with os.fdopen(handle, "w") as f:
        yaml.safe_dump({"models": [upstream_model(upstream_url(cwd))]}, f)
    try:
        return start_openserve(path, cwd=cwd)
    finally:
        os.unlink(path)
