"""Run scenarios against one or more targets side by side (the same payloads, one target after the other for each
scenario), compute metrics, and write the JSON document, the table and the plots."""
from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from benchmarks import plots, report
from benchmarks.endpoints import PATHS, SENDERS
from benchmarks.loadgen import LoadSpec, RunResult, run_load
from benchmarks.metrics import METRICS, client_load

TASKS = {"chat": "chat", "completions": "chat", "embeddings": "embedding", "images": "image", "speech": "speech"}


@dataclass
class Target:
    name: str
    base_url: str  # http://host:port, without /v1
    pid: int | None = None  # when this run started the server: its CPU time is counted

    @classmethod
    def parse(cls, text: str, default_name: str = "server") -> "Target":
        """"URL" or "NAME=URL"; a trailing /v1 is dropped."""
        name, _, url = text.partition("=") if "=" in text and not text.startswith("http") else (default_name, "", text)
        url = url.rstrip("/")
        return cls(name, url[:-3] if url.endswith("/v1") else url)


@dataclass
class Scenario:
    """One workload: the same payloads go to every target."""

    name: str
    modality: str
    params: dict
    payloads: list[dict]
    spec: LoadSpec
    warmup: list[dict] = field(default_factory=list)
    send_options: dict = field(default_factory=dict)


def pick_model(target: Target, modality: str, api_key: str | None = None) -> str:
    """The first model of the modality's task that /v1/models lists (`task` is openserve's extension field). A
    server that lists no tasks (another OpenAI-compatible one) must serve a single model, else pass --model."""
    request = urllib.request.Request(target.base_url + "/v1/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=30) as response:
        models = json.load(response)["data"]
    if not models:
        raise RuntimeError(f"{target.base_url} serves no model")
    for m in models:
        if m.get("task") == TASKS[modality]:
            return m["id"]
    if len(models) == 1 and "task" not in models[0]:
        return models[0]["id"]
    listed = ", ".join(f"{m['id']} ({m['task']})" if "task" in m else m["id"] for m in models)
    raise RuntimeError(f"{target.base_url} lists no {TASKS[modality]} model that can be told apart; pass --model "
                       f"(it lists: {listed})")


def _server_cpu(pid: int | None) -> dict[int, tuple[str, float]]:
    if pid is None:
        return {}
    from benchmarks.server import cpu_seconds_by_process, server_processes

    return cpu_seconds_by_process(server_processes(pid))


def _server_cpu_delta(before: dict, after: dict, requests: int) -> dict:
    """CPU seconds the server's processes spent during the run, in total and per successful request (ms).
    before/after: cpu_seconds_by_process snapshots (pid -> (label, seconds)); a process new since `before` counts
    from zero, and it is labelled by its name at the end."""
    if not before:
        return {}
    per_process = {label: seconds - before.get(pid, ("", 0.0))[1] for pid, (label, seconds) in after.items()}
    total = sum(per_process.values())
    top = dict(sorted(((k, round(v, 3)) for k, v in per_process.items() if v > 0.01), key=lambda kv: -kv[1])[:8])
    return {"server_cpu_s": total, "server_cpu_ms_per_request": 1000 * total / max(requests, 1),
            "server_cpu_by_process_s": top}


async def measure(target: Target, scenario: Scenario, progress: bool, headers: dict | None) -> tuple[dict, RunResult]:
    """Warm up, then run the scenario against the target; returns (report entry, raw result)."""
    url = target.base_url + PATHS[scenario.modality]
    send = functools.partial(SENDERS[scenario.modality], **scenario.send_options)
    if scenario.warmup:
        warm = LoadSpec(concurrency=min(len(scenario.warmup), scenario.spec.concurrency or 8))
        await run_load(send, url, scenario.warmup, warm, progress=False, headers=headers)
    before = _server_cpu(target.pid)
    result = await run_load(send, url, scenario.payloads, scenario.spec, f"{target.name} {scenario.name}", progress,
                            headers)
    metrics = METRICS[scenario.modality](result.records, result.duration_s, scenario.params.get("goodput_slos_ms"))
    cores = os.cpu_count() or 1
    metrics.update(client_load(result.client_cpu_s, result.duration_s, result.machine_busy, cores))
    metrics.update(_server_cpu_delta(before, _server_cpu(target.pid), metrics["completed"]))
    return metrics, result


def run_all(targets: list[Target], scenarios: list[Scenario], *, progress: bool = True, raw: bool = False,
            api_key: str | None = None, repeat: int = 1, settle_s: float = 1.0) -> tuple[list[dict], dict[int, list]]:
    """Every scenario on every target, targets alternating per scenario (and per repetition, so that drifting
    background load hits all of them alike); returns (run entries, records by entry index)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    runs, records = [], {}
    for scenario in scenarios:
        for rep in range(repeat):
            for target in targets:
                time.sleep(settle_s)  # let the previous run's stragglers (e.g. Ray's metric pushes) drain
                metrics, result = asyncio.run(measure(target, scenario, progress, headers))
                records[len(runs)] = result.records
                params = {**scenario.params, "repeat": rep} if repeat > 1 else scenario.params
                runs.append(report.run_entry(target.name, scenario.name, scenario.modality, params, metrics,
                                             result, raw))
    return runs, records


def write_outputs(doc: dict, records: dict[int, list], out_dir: str, prefix: str, make_plots: bool = True) -> list[str]:
    """<out>/<prefix>.json, plus CDF and (when concurrency varies) sweep PNGs; prints the table. Returns paths."""
    path = os.path.join(out_dir, f"{prefix}.json")
    report.write_json(doc, path)
    paths = [path]
    runs = doc["runs"]
    if make_plots and runs:
        for modality in dict.fromkeys(r["modality"] for r in runs):
            idx = [i for i, r in enumerate(runs) if r["modality"] == modality]
            mine, recs = [runs[i] for i in idx], {n: records[i] for n, i in enumerate(idx)}
            paths += plots.cdf_plots(mine, recs, out_dir, f"{prefix}-{modality}")
            if len({r["params"].get("concurrency") for r in mine}) > 1:
                paths += plots.sweep_plots(mine, out_dir, f"{prefix}-{modality}")
    print(report.table(runs))
    print(report.baseline_table(doc["baselines"]))
    for line in report.client_warnings(runs):
        print(line, file=sys.stderr)
    print("wrote " + ", ".join(paths))
    return paths


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
