"""The figures of the README's Benchmarks section in one run: `openserve up` on the default config beside the same
models with batching off (benchmarks/configs/unbatched.yaml), plus the in-process baselines, on this machine.

    python -m benchmarks suite --out bench-results

Checks (median over --repeat alternations of the two servers):
  embeddings  16 concurrent requests of 32 short sentences >= 80% of in-process SentenceTransformer.encode at batch 128
  embeddings  64 concurrent one-sentence requests: batched >= 1.5x unbatched
  images      8 concurrent: batched images/s >= 1.5x unbatched
  speech      8 concurrent: batched audio s/s >= 1.5x unbatched

How: the default server starts first and runs, alone on the machine, the scenarios that have no batching-off
counterpart (16 x 32 sentences, chat). The 16 x 32 runs alternate with in-process `encode` at batch 128 in this
process (the server idle meanwhile; the CPU other processes took is reported): this box's speed drifts by 10-30%
over minutes (a shared 300 MB L3), so the 80% check compares figures taken next to each other. The same
in-process figure with every server stopped is reported beside it. Then the batching-off server starts and the
paired scenarios alternate between the two. Embedding requests ask for base64 vectors, as the official openai
client does by default.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

from benchmarks import baselines, plots, report, runner
from benchmarks.loadgen import LoadSpec
from benchmarks.runner import Scenario, Target
from benchmarks.server import start_openserve
from benchmarks.workloads import Lengths, embedding_payloads, generation_payloads, image_payloads, speech_payloads

UNBATCHED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "unbatched.yaml")
EMBED, IMAGE, SPEECH, CHAT = "all-minilm-l6-v2", "tiny-random-sd", "piper-joe-medium", "smollm2-135m-instruct"
SENTENCE = Lengths(8, 14)  # words: "short sentences"
B64 = "base64"  # what the openai client asks for when the caller does not say
BIG_SCENARIO = "c=16 x32"


def add_parser(sub) -> None:
    p = sub.add_parser("suite", help="every README figure: default server vs batching off vs in-process")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--name", help="file prefix (default: suite-<timestamp>)")
    p.add_argument("--repeat", type=int, default=2, help="alternations of the two servers per scenario")
    p.add_argument("--scale", type=float, default=1.0, help="multiply request counts (0.25 for a quick look)")
    p.add_argument("--skip", default="", help="comma list of parts to leave out: embeddings,images,speech,chat")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def _n(args, count: int) -> int:
    return max(4, int(count * args.scale))


def embedding_scenarios(args) -> tuple[list[Scenario], list[Scenario]]:
    """(both servers: one-sentence sweep incl. c=64; default only: 16 x 32 sentences)."""
    sweep = []
    for c in (1, 4, 16, 64):
        payloads = embedding_payloads(EMBED, _n(args, max(64, 8 * c)), 1, SENTENCE, seed=c, encoding_format=B64)
        sweep.append(Scenario(f"c={c} x1", "embeddings", {"concurrency": c, "inputs_per_request": 1, "model": EMBED},
                              payloads, LoadSpec(concurrency=c), warmup=payloads[:c]))
    payloads = embedding_payloads(EMBED, _n(args, 160), 32, SENTENCE, seed=7, encoding_format=B64)
    big = Scenario(BIG_SCENARIO, "embeddings", {"concurrency": 16, "inputs_per_request": 32, "model": EMBED,
                                             "encoding_format": B64},
                   payloads, LoadSpec(concurrency=16), warmup=payloads[:16])
    return sweep, [big]


def image_scenarios(args) -> list[Scenario]:
    out = []
    for c in (1, 8):
        payloads = image_payloads(IMAGE, _n(args, 16 if c == 1 else 64), "64x64", 2, seed=c)
        out.append(Scenario(f"c={c} 64x64 2 steps", "images", {"concurrency": c, "size": "64x64", "steps": 2},
                            payloads, LoadSpec(concurrency=c), warmup=payloads[:c]))
    return out


def speech_scenarios(args) -> list[Scenario]:
    out = []
    for c in (1, 8):
        payloads = speech_payloads(SPEECH, _n(args, 8 if c == 1 else 32), Lengths(20, 20), seed=c)
        out.append(Scenario(f"c={c} 20 words", "speech", {"concurrency": c, "input_len_words": 20},
                            payloads, LoadSpec(concurrency=c), warmup=payloads[:c]))
    return out


def chat_scenarios(args) -> list[Scenario]:
    out = []
    for c in (1, 4, 8):
        payloads = generation_payloads("chat", CHAT, _n(args, max(8, 2 * c)), Lengths(32, 32), Lengths(32, 32), seed=c)
        params = {"concurrency": c, "input_len_words": 32, "output_len": 32,
                  "goodput_slos_ms": {"ttft": 1000, "tpot": 100}}
        out.append(Scenario(f"c={c}", "chat", params, payloads, LoadSpec(concurrency=c), warmup=payloads[:1]))
    return out


def inprocess_baselines(parts: set[str]) -> list[dict]:
    """Each model built as its replica builds it, called directly (run while the servers are stopped)."""
    found = []
    if "embeddings" in parts:
        backend, _ = baselines.build(baselines.model_spec(None, EMBED))
        found += [{**baselines.embeddings_encode(backend, big_texts(), b), "servers": "stopped"} for b in (1, 32, 128)]
        del backend
    if "images" in parts:
        backend, _ = baselines.build(baselines.model_spec(None, IMAGE))
        found += [baselines.images_generate(backend, b, "64x64", 2) for b in (1, 8)]
        del backend
    if "speech" in parts:
        backend, _ = baselines.build(baselines.model_spec(None, SPEECH))
        found.append(baselines.speech_synthesize(backend, 8, Lengths(20, 20)))
    if "chat" in parts:
        prompts = [p["messages"][0]["content"]
                   for p in generation_payloads("chat", CHAT, 4, Lengths(32, 32), Lengths(32, 32))]
        found.append(baselines.chat_hf_generate(baselines.model_spec(None, CHAT), prompts, 32))
    return found


def big_texts() -> list[str]:
    """The 512 sentences of the 16 x 32 scenario's first wave: the in-process reference encodes these."""
    return [t for p in embedding_payloads(EMBED, 16, 32, SENTENCE, seed=7) for t in p["input"]]


def _median(runs: list[dict], target: str, scenario: str, key: str) -> float | None:
    values = [r["metrics"][key] for r in runs if r["target"] == target and r["scenario"] == scenario]
    return statistics.median(values) if values else None


def _check(name: str, value: float | None, reference: float | None, target: float, detail: str) -> dict:
    ratio = value / reference if value is not None and reference else None
    return {"check": name, "value": value, "reference": reference, "ratio": ratio, "target_ratio": target,
            "met": ratio is not None and ratio >= target, "detail": detail}


def checks(runs: list[dict], found: list[dict]) -> list[dict]:
    beside = [b["input_throughput"] for b in found if b.get("servers") == "default idle"]
    quiet = next((b["input_throughput"] for b in found
                  if b.get("servers") == "stopped" and b.get("batch_size") == 128), None)
    big = _median(runs, "default", BIG_SCENARIO, "input_throughput")
    return [
        _check("embeddings: 16 x 32 sentences vs in-process encode batch 128 (alternating)", big,
               statistics.median(beside) if beside else None, 0.8, "sentences/s"),
        {**_check("embeddings: the same vs in-process encode batch 128 measured with the servers stopped", big,
                  quiet, 0.8, "sentences/s"), "informational": True},
        _check("embeddings: 64 concurrent one-sentence, batched vs unbatched",
               _median(runs, "default", "c=64 x1", "input_throughput"),
               _median(runs, "unbatched", "c=64 x1", "input_throughput"), 1.5, "sentences/s"),
        _check("images: 8 concurrent, batched vs unbatched",
               _median(runs, "default", "c=8 64x64 2 steps", "image_throughput"),
               _median(runs, "unbatched", "c=8 64x64 2 steps", "image_throughput"), 1.5, "images/s"),
        _check("speech: 8 concurrent, batched vs unbatched", _median(runs, "default", "c=8 20 words", "rtfx"),
               _median(runs, "unbatched", "c=8 20 words", "rtfx"), 1.5, "audio seconds per second"),
    ]


class _Runs:
    """Run entries and their records, gathered over several run_all calls."""

    def __init__(self):
        self.runs: list[dict] = []
        self.records: dict[int, list] = {}

    def add(self, runs: list[dict], records: dict[int, list]) -> None:
        self.records.update({len(self.runs) + i: recs for i, recs in records.items()})
        self.runs += runs


def measure_servers(args, parts: set[str]) -> tuple[list[dict], dict, list[dict]]:
    """The default server alone (16 x 32 alternating with in-process encode, then chat); then beside it the
    batching-off server, every paired scenario alternating between the two. Returns (runs, records, in-process
    figures taken meanwhile)."""
    progress = not args.no_progress
    sweep, big = embedding_scenarios(args) if "embeddings" in parts else ([], [])
    backend = baselines.build(baselines.model_spec(None, EMBED))[0] if big else None
    gathered, found = _Runs(), []
    print("starting openserve up (default config) ...", file=sys.stderr)
    default = start_openserve(None)
    unbatched = None
    try:
        first = Target("default", default.base_url, default.proc.pid)
        for rep in range(args.repeat if big else 0):
            found.append(encode_beside_server(backend, big_texts(), 128, f"default server idle, round {rep}"))
            gathered.add(*runner.run_all([first], big, progress=progress))
        if big:
            found.append(encode_beside_server(backend, big_texts(), 128, f"default server idle, round {args.repeat}"))
        if "chat" in parts:
            gathered.add(*runner.run_all([first], chat_scenarios(args), progress=progress, repeat=args.repeat))
        paired = sweep + (image_scenarios(args) if "images" in parts else []) + (
            speech_scenarios(args) if "speech" in parts else [])
        if paired:
            print("starting the batching-off server ...", file=sys.stderr)
            unbatched = start_openserve(UNBATCHED)
            both = [first, Target("unbatched", unbatched.base_url, unbatched.proc.pid)]
            gathered.add(*runner.run_all(both, paired, progress=progress, repeat=args.repeat))
    finally:
        default.stop()
        if unbatched is not None:
            unbatched.stop()
    return gathered.runs, gathered.records, found


def encode_beside_server(backend, texts: list[str], batch: int, label: str, servers: str = "default idle") -> dict:
    """In-process encode of `texts` at `batch` while a server idles, with the CPU others took meanwhile."""
    from benchmarks.engine import CpuMeter

    meter = CpuMeter()
    figure = baselines.embeddings_encode(backend, texts, batch)
    return {**figure, "name": f"{figure['name']} ({label})", "servers": servers, **meter.elapsed()}


def _num(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}" if suffix else f"{value:.1f}"


def markdown(doc: dict) -> str:
    """The checks as a Markdown table, headed by the machine and revision they were measured on."""
    m = doc["machine"]
    lines = [f"Machine: {m['cpu_model']}, {m['logical_cores']} cores, {m['memory_gb']} GB; "
             f"git {str(doc['git']['commit'])[:8]}{' (dirty)' if doc['git']['dirty'] else ''}; {doc['started_at']}", "",
             "| check | measured | reference | ratio | target | met |", "|---|---|---|---|---|---|"]
    for c in doc["checks"]:
        met = ("yes" if c["met"] else "no") + (" (info)" if c.get("informational") else "")
        lines.append(f"| {c['check']} ({c['detail']}) | {_num(c['value'])} | {_num(c['reference'])} | "
                     f"{_num(c['ratio'], 'x')} | {c['target_ratio']}x | {met} |")
    return "\n".join(lines) + "\n"


def overview_plot(runs: list[dict], found: list[dict], path: str) -> str | None:
    """The README's plot: embedding inputs/s against concurrency, batched and not, with the in-process lines."""
    points: dict[str, dict[int, list]] = {}
    for r in runs:
        if r["modality"] == "embeddings":
            name = f"{r['target']}, {r['scenario'].split()[-1].replace('x', '')} input(s) per request"
            by_c = points.setdefault(name, {})
            by_c.setdefault(r["params"]["concurrency"], []).append(r["metrics"]["input_throughput"])
    if not points:
        return None
    series = {name: [(c, statistics.median(v)) for c, v in by_c.items()] for name, by_c in points.items()}
    references = {f"in-process encode, batch {b['batch_size']}": b["input_throughput"]
                  for b in found if b["modality"] == "embeddings" and b["batch_size"] in (1, 128)
                  and b.get("servers") == "stopped"}
    return plots.sweep_plot(series, "sentences/s", "all-MiniLM-L6-v2 through openserve up (2 cores)", path,
                            xlabel="concurrent requests", references=references)


def run(args) -> int:
    started_at = time.time()
    parts = {"embeddings", "images", "speech", "chat"} - set(filter(None, args.skip.split(",")))
    runs, records, found = measure_servers(args, parts)
    found += inprocess_baselines(parts)
    config = {k: v for k, v in vars(args).items() if k != "run"}
    doc = report.document(" ".join(sys.argv), {**config, "unbatched_config": UNBATCHED}, runs, found, started_at)
    doc["checks"] = checks(runs, found)
    prefix = args.name or f"suite-{runner.stamp()}"
    runner.write_outputs(doc, records, args.out, prefix)
    overview_plot(runs, found, os.path.join(args.out, f"{prefix}-embeddings-overview.png"))
    table = markdown(doc)
    with open(os.path.join(args.out, f"{prefix}.md"), "w") as f:
        f.write(table + "\n" + "```\n" + report.table(runs) + report.baseline_table(found) + "```\n")
    print(table)
    return 0 if all(c["met"] for c in doc["checks"] if not c.get("informational")) else 1
