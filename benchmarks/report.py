"""The run's JSON document (machine, config, git revision, metrics, optional raw timings) and the terminal table."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from importlib import metadata

import psutil

from benchmarks.server import REPO

# The columns of the terminal table per modality: (header, metrics key, format).
COLUMNS = {
    "chat": [("req/s", "request_throughput", ".2f"), ("out tok/s", "output_throughput", ".1f"),
             ("TTFT p50", "median_ttft_ms", ".0f"), ("TTFT p99", "p99_ttft_ms", ".0f"),
             ("TPOT p50", "median_tpot_ms", ".1f"), ("ITL p50", "median_itl_ms", ".1f"),
             ("E2E p50", "median_e2el_ms", ".0f"), ("E2E p99", "p99_e2el_ms", ".0f")],
    "embeddings": [("req/s", "request_throughput", ".1f"), ("inputs/s", "input_throughput", ".1f"),
                   ("p50 ms", "median_e2el_ms", ".1f"), ("p90 ms", "p90_e2el_ms", ".1f"),
                   ("p99 ms", "p99_e2el_ms", ".1f")],
    "images": [("req/s", "request_throughput", ".2f"), ("images/s", "image_throughput", ".2f"),
               ("p50 ms", "median_e2el_ms", ".0f"), ("p90 ms", "p90_e2el_ms", ".0f"), ("p99 ms", "p99_e2el_ms", ".0f")],
    "speech": [("req/s", "request_throughput", ".2f"), ("audio s/s", "rtfx", ".1f"),
               ("TTFB p50", "median_ttfb_ms", ".0f"), ("p50 ms", "median_e2el_ms", ".0f"),
               ("p90 ms", "p90_e2el_ms", ".0f"), ("p99 ms", "p99_e2el_ms", ".0f")],
}
COLUMNS["completions"] = COLUMNS["chat"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """What the figures depend on: cores, CPU, memory, load, library versions."""
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "logical_cores": psutil.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": {p: _version(p) for p in ("torch", "ray", "fastapi", "uvicorn", "aiohttp", "transformers")},
    }


def git_revision() -> dict:
    """HEAD and whether the tree has uncommitted changes (read-only git commands)."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def run_entry(target: str, scenario: str, modality: str, params: dict, metrics: dict, result, raw: bool) -> dict:
    """One measured run: what was sent where, the metrics, the client's cost, and (raw) every request's timings."""
    entry = {"target": target, "scenario": scenario, "modality": modality, "params": params, "metrics": metrics}
    if result is not None and raw:
        entry["requests"] = [dataclasses.asdict(r) for r in result.records]
    return entry


def document(command: str, config: dict, runs: list[dict], baselines: list[dict], started: float) -> dict:
    return {
        "tool": "openserve-bench",
        "command": command,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "git": git_revision(),
        "config": config,
        "runs": runs,
        "baselines": baselines,
    }


def write_json(doc: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=_jsonable)
        f.write("\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def table(runs: list[dict]) -> str:
    """One block per modality: a row per (target, scenario) with the headline metrics and the client's load."""
    lines = []
    for modality in dict.fromkeys(r["modality"] for r in runs):
        cols = COLUMNS[modality]
        header = ["target", "scenario", "ok", "err"] + [c[0] for c in cols] + ["client CPU"]
        rows = [header]
        for r in (r for r in runs if r["modality"] == modality):
            m = r["metrics"]
            client = f"{m.get('client_core_utilization', 0):.0%}" + (" BOUND" if m.get("client_bound") else "")
            rows.append([r["target"], r["scenario"], str(m["completed"]), str(m["failed"])]
                        + [_fmt(m.get(key), spec) for _, key, spec in cols] + [client])
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines.append(f"== {modality} ==")
        for n, row in enumerate(rows):
            cells = (cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            lines.append("  ".join(cells))
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
    return "\n".join(lines)


def baseline_table(baselines: list[dict]) -> str:
    if not baselines:
        return ""
    lines = ["== in-process baselines (no HTTP, no Ray) =="]
    for b in baselines:
        figures = ", ".join(f"{k}={_fmt(v, '.4g')}" for k, v in b.items() if k not in ("name", "modality"))
        lines.append(f"  {b['name']}: {figures}")
    return "\n".join(lines) + "\n"


def client_warnings(runs: list[dict]) -> list[str]:
    out = []
    for r in runs:
        m = r["metrics"]
        if m.get("client_bound"):
            out.append(
                f"warning: {r['target']} {r['scenario']}: the load generator kept {m['client_core_utilization']:.0%} "
                "of a core busy; it was (close to) the bottleneck, so the server may be faster than measured."
            )
    return out
