"""Small requests at in-process speed (issue 15): 64 concurrent one-sentence embedding requests through `openserve
up` against in-process `encode` of the same sentences at batch 64, the two alternating in one run.

    python -m benchmarks small-requests                      # the default config (all four models)
    python -m benchmarks small-requests --only-embedding     # a config with only the default embedding model

The check: the server's sentences/s >= 60% of in-process encode's (medians over --rounds alternations). Reported
beside it: p50 latency, and the server's CPU per request by process (ingress, model replica, Ray's own).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import yaml

from benchmarks import baselines, report, runner
from benchmarks.loadgen import LoadSpec
from benchmarks.runner import Scenario, Target
from benchmarks.server import add_compare_tree, source_trees, start_openserve
from benchmarks.suite import B64, EMBED, SENTENCE, encode_beside_server
from benchmarks.workloads import embedding_payloads

TARGET_RATIO = 0.6


def add_parser(sub) -> None:
    p = sub.add_parser("small-requests", help="64 x 1-sentence embedding requests vs in-process encode at batch 64")
    p.add_argument("--only-embedding", action="store_true", help="serve only the default embedding model")
    add_compare_tree(p, "also serve the project's source tree in DIR (e.g. a checkout of main), alternating")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=640, help="requests per server round")
    p.add_argument("--rounds", type=int, default=3, help="alternations of server and in-process encode")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--name", help="file prefix (default: small-requests-<timestamp>)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def embedding_only_config(tree: str) -> str:
    """The source tree's default config with only the embedding model, as a temporary file."""
    with open(os.path.join(tree, "configs", "default.yaml")) as f:
        config = yaml.safe_load(f)
    config["models"] = [m for m in config["models"] if m["name"] == EMBED]
    handle, path = tempfile.mkstemp(prefix="embed-only-", suffix=".yaml")
    with os.fdopen(handle, "w") as f:
        yaml.safe_dump(config, f)
    return path


def summary(runs: list[dict], found: list[dict]) -> dict:
    """Medians over the rounds (one server's runs): server and in-process sentences/s, their ratio, p50 and CPU ms
    per request."""
    served = statistics.median(r["metrics"]["input_throughput"] for r in runs)
    inprocess = statistics.median(b["input_throughput"] for b in found)
    by_process: dict[str, list[float]] = {}
    for r in runs:
        done = max(r["metrics"]["completed"], 1)
        for label, seconds in r["metrics"].get("server_cpu_by_process_s", {}).items():
            by_process.setdefault(label.rsplit(":", 1)[0], []).append(1000 * seconds / done)
    return {
        "server_sentences_per_s": round(served, 1), "inprocess_sentences_per_s": round(inprocess, 1),
        "ratio": round(served / inprocess, 3), "target_ratio": TARGET_RATIO, "met": served / inprocess >= TARGET_RATIO,
        "p50_ms": round(statistics.median(r["metrics"]["median_e2el_ms"] for r in runs), 1),
        "server_cpu_ms_per_request": round(statistics.median(
            r["metrics"].get("server_cpu_ms_per_request", 0.0) for r in runs), 2),
        "cpu_ms_per_request_by_process": {k: round(statistics.median(v), 2) for k, v in by_process.items()},
        "client_cpu_s": [round(r["metrics"]["client_cpu_s"], 2) for r in runs],
    }


def start_servers(args) -> tuple[list[tuple[str, object]], list[str]]:
    """([(target name, ServerProcess)], temporary configs to remove): this tree's server, then each
    --compare-tree's, each on its own default config (its modules first on the path: Ray's workers import from
    PYTHONPATH)."""
    trees = source_trees(args.compare_tree)
    started, configs = [], []
    try:
        for name, tree in trees:
            config = embedding_only_config(tree) if args.only_embedding else None
            configs += [config] if config else []
            print(f"starting openserve up ({name}: {tree}) ...", file=sys.stderr)
            started.append((name, start_openserve(config, env={"PYTHONPATH": tree}, cwd=tree)))
    except BaseException:
        for _, server in started:
            server.stop()
        raise
    return started, configs


def run(args) -> int:
    started_at = time.time()
    payloads = embedding_payloads(EMBED, args.requests, 1, SENTENCE, seed=64, encoding_format=B64)
    texts = [p["input"][0] for p in payloads]
    backend = baselines.build(baselines.model_spec(None, EMBED))[0]
    which = "embedding only" if args.only_embedding else "default config"
    scenario = Scenario(f"c={args.concurrency} x1", "embeddings",
                        {"concurrency": args.concurrency, "inputs_per_request": 1, "model": EMBED, "server": which},
                        payloads, LoadSpec(concurrency=args.concurrency), warmup=payloads[: args.concurrency])
    servers, configs = start_servers(args)
    runs, records, found = [], {}, []
    try:
        targets = [Target(name, server.base_url, server.proc.pid) for name, server in servers]
        for rep in range(args.rounds):
            found.append(encode_beside_server(backend, texts, args.concurrency, f"servers idle, round {rep}",
                                              servers=which))
            new_runs, new_records = runner.run_all(targets, [scenario], progress=not args.no_progress)
            records.update({len(runs) + i: recs for i, recs in new_records.items()})
            runs += new_runs
    finally:
        for _, server in servers:
            server.stop()
        for config in configs:
            os.unlink(config)
    options = {k: v for k, v in vars(args).items() if k != "run"}
    doc = report.document(" ".join(sys.argv), options, runs, found, started_at)
    doc["small_requests"] = {t.name: summary([r for r in runs if r["target"] == t.name], found) for t in targets}
    runner.write_outputs(doc, records, args.out, args.name or f"small-requests-{runner.stamp()}", make_plots=False)
    print(json.dumps(doc["small_requests"], indent=1))
    return 0 if doc["small_requests"]["this tree"]["met"] else 1
