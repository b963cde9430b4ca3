"""Gateway stacks for `python -m benchmarks overhead`: the same no-op request, proxied to a no-op upstream.

  gateway-no-ray  serving.api.app on uvicorn, its model `noop` an upstream model -> the bare no-op app (uvicorn)
  ray-gateway     `openserve up` whose model `noop` is an upstream model -> the same bare no-op app

The upstream is the `bare-uvicorn` floor itself, in a process of its own: each stack's `added_p50_ms` (its p50
minus the floor's, same client) is what the gateway adds to a request.

    python -m benchmarks overhead --stacks bare-uvicorn,gateway-no-ray,ray-gateway --concurrency 1,32
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


def start_ray_gateway(cwd: str) -> ServerProcess:
    handle, path = tempfile.mkstemp(prefix="gateway-", suffix=".yaml")
    with os.fdopen(handle, "w") as f:
        yaml.safe_dump({"models": [upstream_model(upstream_url(cwd))]}, f)
    try:
        return start_openserve(path, cwd=cwd)
    finally:
        os.unlink(path)
