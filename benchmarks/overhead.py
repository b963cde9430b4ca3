"""Serving overhead: a no-op embedding model behind three stacks, same client, same machine, side by side.

  bare-uvicorn   a raw ASGI app on uvicorn that answers every POST with a canned embedding response: the floor
  api-no-ray     serving.api.app.build_app (FastAPI routes, pydantic, middlewares) on uvicorn, the fake embedding
                 backend called in-process: what the HTTP layer costs
  ray-full       `openserve up` on benchmarks/configs/noop.yaml: HTTP served by the ingress replica ->
                 model replica (batching off): what the Ray hops add
  ray-quiet      the same with metrics and the access log off and no API key
  ray-operated   the same with metrics, the access log and an API key with limits (checked, counted) on
  gateway-no-ray, ray-gateway, raw-proxy   the same request proxied to an upstream that is the bare floor
                 (benchmarks/gateway.py; raw-proxy: the floor of any Python gateway)

    python -m benchmarks overhead --concurrency 1,32
    python -m benchmarks overhead --stacks ray-quiet,ray-operated --concurrency 32 --repeat 3   # what operating costs
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request

import yaml

from benchmarks import gateway, report, runner
from benchmarks.loadgen import LoadSpec
from benchmarks.runner import Scenario, Target
from benchmarks.server import REPO, start_openserve, start_uvicorn
from benchmarks.workloads import Lengths, embedding_payloads

NOOP_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "noop.yaml")
MODEL = "noop"
_CANNED = json.dumps({
    "object": "list", "model": MODEL, "usage": {"prompt_tokens": 4, "total_tokens": 4},
    "data": [{"object": "embedding", "index": 0, "embedding": [0.125] * 8}],
}).encode()


async def bare_app(scope, receive, send) -> None:
    """The floor: read the body, answer with a fixed embedding response. No routing, no validation."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_CANNED)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _CANNED})


class InProcessEmbeddingClient:
    """serving.clients.EmbeddingClient over a backend in this process (no Ray handle)."""

    def __init__(self, backend):
        self.backend = backend

    async def embed(self, inputs):
        from serving.clients import EmbeddingResult

        out = self.backend.embed(list(inputs))
        return EmbeddingResult(out.vectors, int(sum(out.num_tokens)))


def api_app():
    """uvicorn factory: the real FastAPI app over the fake embedding backend, in-process."""
    from models.embeddings.fake import FakeEmbeddingBackend
    from serving.api.app import build_app
    from serving.clients import ModelCard
    from serving.router import ModelRouter, ServedModel

    card = ModelCard(MODEL, "embedding", 0, metadata={"dimensions": 8})
    return build_app(ModelRouter([ServedModel(card, InProcessEmbeddingClient(FakeEmbeddingBackend()))]))


def add_parser(sub) -> None:
    p = sub.add_parser("overhead", help="no-op model: bare uvicorn vs FastAPI app vs full Ray path")
    p.add_argument("--concurrency", default="1,32", help="comma list")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per stack and level")
    p.add_argument("--repeat", type=int, default=1, help="alternate the stacks N times per level; medians reported")
    p.add_argument("--stacks", default="bare-uvicorn,api-no-ray,ray-full", help="which stacks, comma list")
    p.add_argument("--ray-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the Ray server, e.g. RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0; "
                        "adds a `ray-tuned` stack beside `ray-full`")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--name")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(run=run)


def config_variant(server: dict) -> str:
    """noop.yaml with `server` settings over its own, as a temporary file."""
    with open(NOOP_CONFIG) as f:
        config = yaml.safe_load(f)
    config["server"] = {**config.get("server", {}), **server}
    handle, path = tempfile.mkstemp(prefix="noop-", suffix=".yaml")
    with os.fdopen(handle, "w") as f:
        yaml.safe_dump(config, f)
    return path


BENCH_KEY: dict[str, str] = {}  # the secret of the key made on ray-operated (loopback admin: no admin key)


def start_operated(cwd: str):
    """ray-operated: metrics, access log, and a registry key with limits far above the load, so that every request
    is authenticated, admitted by its limiter and charged its tokens."""
    server = start_openserve(config_variant({"metrics": True, "access_log": True}), cwd=cwd)
    body = {"name": "bench", "limits": {"requests_per_minute": 10**9, "tokens_per_minute": 10**12,
                                        "max_concurrent": 10**6}}
    request = urllib.request.Request(server.base_url + "/admin/keys", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        BENCH_KEY["key"] = json.load(response)["key"]
    return server


def start_stacks(names: list[str], ray_env: dict[str, str]) -> list[tuple[str, object]]:
    """(name, ServerProcess) for each requested stack, started one after the other. "STACK@DIR" serves the
    project's source tree in DIR instead of this one (e.g. a clone of the previous commit, to compare versions)."""
    makers = {
        "bare-uvicorn": lambda cwd: start_uvicorn("benchmarks.overhead:bare_app", cwd=cwd),
        "api-no-ray": lambda cwd: start_uvicorn("benchmarks.overhead:api_app", factory=True, cwd=cwd),
        "ray-full": lambda cwd: start_openserve(NOOP_CONFIG, cwd=cwd),
        "ray-tuned": lambda cwd: start_openserve(NOOP_CONFIG, env=ray_env, cwd=cwd),
        "ray-quiet": lambda cwd: start_openserve(config_variant({"metrics": False, "access_log": False}), cwd=cwd),
        "ray-operated": start_operated,
        "gateway-no-ray": gateway.start_gateway_no_ray,
        "raw-proxy": gateway.start_raw_proxy,
        "ray-gateway": gateway.start_ray_gateway,
    }
    if ray_env:
        names = names + ["ray-tuned"]
    started = []
    try:
        for name in names:
            stack, _, tree = name.partition("@")
            print(f"starting {name} ...", file=sys.stderr)
            started.append((name, makers[stack](tree or REPO)))
    except BaseException:
        for _, server in started:
            server.stop()
        gateway.stop_upstream()
        raise
    return started


def scenarios(levels: list[int], duration_s: float) -> list[Scenario]:
    """One-sentence embedding requests in a closed loop for `duration_s` per concurrency level."""
    out = []
    payloads = embedding_payloads(MODEL, 256, 1, Lengths(4, 4))
    for c in levels:
        params = {"concurrency": c, "duration_s": duration_s, "model": MODEL, "inputs_per_request": 1}
        out.append(Scenario(f"c={c}", "embeddings", params, payloads, LoadSpec(concurrency=c, duration_s=duration_s),
                            warmup=payloads[: max(50, 2 * c)]))
    return out


def summary(runs: list[dict]) -> dict:
    """Per concurrency level and stack: median (over repetitions) req/s, p50 ms and server CPU per request, and
    the ratio to the bare floor."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(r["scenario"], {}).setdefault(r["target"], []).append(r["metrics"])
    out: dict = {}
    for level, stacks in groups.items():
        out[level] = {name: {key: round(statistics.median(m.get(key, 0.0) for m in ms), 2)
                             for key in ("request_throughput", "median_e2el_ms", "server_cpu_ms_per_request")}
                      for name, ms in stacks.items()}
        floor, quiet = out[level].get("bare-uvicorn"), out[level].get("ray-quiet")
        for name, figures in out[level].items():
            if floor and name != "bare-uvicorn":
                figures["throughput_vs_bare"] = round(figures["request_throughput"] / floor["request_throughput"], 3)
                figures["added_p50_ms"] = round(figures["median_e2el_ms"] - floor["median_e2el_ms"], 2)
            if quiet and name == "ray-operated":  # the cost of metrics + access log + keys (target: >= 0.95)
                figures["throughput_vs_quiet"] = round(figures["request_throughput"] / quiet["request_throughput"], 3)
    return out


def run(args) -> int:
    started_at = time.time()
    ray_env = dict(item.split("=", 1) for item in args.ray_env)
    servers = start_stacks(args.stacks.split(","), ray_env)
    try:
        targets = [Target(name, server.base_url, pid=server.proc.pid) for name, server in servers]
        levels = [int(v) for v in args.concurrency.split(",")]
        # Every stack gets the bench key (one without keys ignores it), so the requests are the same bytes.
        runs, records = runner.run_all(targets, scenarios(levels, args.duration), progress=not args.no_progress,
                                        repeat=args.repeat, api_key=BENCH_KEY.get("key"))
    finally:
        for _, server in servers:
            server.stop()
        gateway.stop_upstream()
    config = {**{k: v for k, v in vars(args).items() if k != "run"}, "noop_config": NOOP_CONFIG}
    doc = report.document(" ".join(sys.argv), config, runs, [], started_at)
    doc["overhead"] = summary(runs)
    runner.write_outputs(doc, records, args.out, args.name or f"overhead-{runner.stamp()}", not args.no_plots)
    print(json.dumps(doc["overhead"], indent=1))
    return 0
