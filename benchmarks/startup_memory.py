"""Start-up time and memory of the default server (`openserve up`, no config): what a new user's `make run` gives.

Each round starts the server, times `openserve up` to its "ready in" line, sends one request per modality (chat,
embeddings, image, speech: every model has then served once), and sums the PSS (proportional set size: shared
pages split among their users) of every process of the server's session, by process. The first round runs with an
empty HOME and data dir (no converted GGUF, no built tiny-SD pipeline: a fresh machine's first start); later rounds
reuse both, as a second `make run` does. Each round also gives the CPU seconds the server's processes spent until
"ready in" (wall time alone misleads on a shared machine) and a timeline of the start (seconds to Ray, Serve, the
ingress, each model ready).

    python -m benchmarks.startup_memory --rounds 3 --out bench-results
    python -m benchmarks.startup_memory --rounds 3 --compare-tree main=/work/main   # alternating, round by round
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time

from benchmarks.runner import stamp
from benchmarks.server import add_compare_tree, cpu_seconds_by_process, server_processes, source_trees, start_openserve

# Lines of `openserve up`'s output that mark a phase of the start (the first line matching each).
MARKS = {
    "ray_started": re.compile(r"Started a local Ray instance"),
    "serve_started": re.compile(r"Started Serve"),
    "ingress_ready": re.compile(r"Application 'openserve' is ready"),
    "ready": re.compile(r"\] ready in "),
}
MODEL_READY = re.compile(r"\[openserve [0-9:]+\] (\S+): ready$")
# A model's backend built (serving/deployments/common.py's log line, from its replica or the LLM engine process):
# from there to its "ready" line is Serve, the registry controller and the CLI noticing.
MODEL_LOADED = re.compile(r"\bmodel (\S+) \(\w+\) loaded from ")


def warm_requests(base_url: str) -> dict[str, float]:
    """One request per default model (seconds each): memory is measured after every model served once."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key="unused", timeout=300)
    calls = {
        "chat": lambda: client.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8),
        "embeddings": lambda: client.embeddings.create(model="all-minilm-l6-v2", input=["hello world"]),
        "image": lambda: client.images.generate(model="tiny-random-sd", prompt="a cat", size="64x64"),
        "speech": lambda: client.audio.speech.create(model="piper-joe-medium", voice="alloy", input="Hello there."),
    }
    took = {}
    for name, call in calls.items():
        started = time.perf_counter()
        call()
        took[name] = round(time.perf_counter() - started, 3)
    return took


def process_label(p) -> str:
    """The process' name, or for a bare `python` what it runs: Ray's dashboard.py, monitor.py and log_monitor.py,
    the CLI (serving.cli), the LLM engine (serving.services.engine_child)."""
    name = p.name()
    if not name.startswith("python"):
        return name
    args = p.cmdline()[1:]
    for i, arg in enumerate(args):
        if arg == "-m" and i + 1 < len(args):
            return f"python -m {args[i + 1]}"
        if arg.endswith(".py"):
            return f"python {os.path.basename(arg)}"
    return name


def memory(pid: int) -> dict:
    """Summed PSS and RSS of the server's processes (MB), and the PSS of each, largest first."""
    per, pss, rss = [], 0, 0
    for p in server_processes(pid):
        try:
            info = p.memory_full_info()
            per.append((process_label(p), round(info.pss / 2**20)))
            pss, rss = pss + info.pss, rss + info.rss
        except Exception:  # noqa: BLE001 - a process that ended holds nothing
            continue
    per.sort(key=lambda x: -x[1])
    return {"pss_mb": round(pss / 2**20), "rss_mb": round(rss / 2**20), "by_process": per}


def timeline(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds from the start to each phase of it (MARKS), to each model's backend built and to its "ready" line."""
    out: dict[str, float] = {}
    for t, line in lines:
        for name, pattern in MARKS.items():
            if name not in out and pattern.search(line):
                out[name] = round(t, 1)
        for prefix, pattern in (("model_loaded", MODEL_LOADED), ("model_ready", MODEL_READY)):
            model = pattern.search(line)
            if model:
                out.setdefault(f"{prefix}:{model.group(1)}", round(t, 1))
    return out


def after_last_load(phases: dict[str, float]) -> float | None:
    """Seconds from the last model's backend built to "ready in": the start's tail, when no model computes any more
    and Serve, the registry controller and the CLI notice that they are ready. None if a line is missing."""
    loads = [t for name, t in phases.items() if name.startswith("model_loaded:")]
    return round(phases["ready"] - max(loads), 1) if loads and "ready" in phases else None


def start_cpu(pid: int) -> dict:
    """CPU seconds (user + system) the server's processes spent so far, in all and by process, largest first.
    Processes that ended before (Ray's short-lived workers) are not counted."""
    per = sorted(((label, round(seconds, 1)) for label, seconds in cpu_seconds_by_process(server_processes(pid)).values()),
                 key=lambda x: -x[1])
    return {"cpu_s": round(sum(seconds for _, seconds in per), 1), "cpu_by_process_s": per}


def one_round(tree: str, home: str, first: bool) -> dict:
    """Start the server of source tree `tree` with HOME and the data dir under `home` (kept: a later round reuses
    its caches), measure, stop."""
    server = start_openserve(None, env={"HOME": home, "PYTHONPATH": tree}, cwd=tree, data_dir=os.path.join(home, "d"))
    try:
        ready_s = server.ready_after_s
        cpu = start_cpu(server.proc.pid)  # before the requests: the start's own
        requests = warm_requests(server.base_url)
        phases = timeline(server.timeline)
        return {"first_start": first, "ready_s": round(ready_s, 2), "timeline_s": phases,
                "after_last_load_s": after_last_load(phases), **cpu,
                "first_requests_s": requests, **memory(server.proc.pid)}
    finally:
        server.stop()


def summary(rounds: list[dict]) -> dict:
    """One tree's figures: the first start, the medians of the later ones."""
    later = [r for r in rounds if not r["first_start"]]
    med = lambda key, rs: statistics.median(r[key] for r in rs) if rs else None  # noqa: E731
    tails = [r for r in later if r.get("after_last_load_s") is not None]
    return {"first_ready_s": med("ready_s", rounds[:1]), "first_cpu_s": med("cpu_s", rounds[:1]),
            "later_ready_s_median": med("ready_s", later), "later_cpu_s_median": med("cpu_s", later),
            "later_after_last_load_s_median": med("after_last_load_s", tails),
            "pss_mb_median": med("pss_mb", rounds)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="starts per tree in all: the first with an empty HOME")
    add_compare_tree(p, "also start the project's source tree in DIR (e.g. a checkout of main), alternating")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    trees = source_trees(args.compare_tree)
    homes = {name: tempfile.mkdtemp(prefix="osb-h", dir="/tmp") for name, _ in trees}  # short: Ray's socket paths
    rounds: dict[str, list[dict]] = {name: [] for name, _ in trees}
    try:
        for i in range(args.rounds):
            order = trees if i % 2 == 0 else trees[::-1]  # neither tree always starts on the quieter side
            for name, tree in order:
                rounds[name].append(one_round(tree, homes[name], first=i == 0))
                print(json.dumps({"tree": name, **rounds[name][-1]}), flush=True)
    finally:
        for home in homes.values():
            shutil.rmtree(home, ignore_errors=True)
    doc = {"benchmark": "startup_memory", "trees": dict(trees),
           "summary": {name: summary(rs) for name, rs in rounds.items() if rs},
           "rounds": rounds if args.compare_tree else rounds["this tree"]}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"startup-memory-{stamp()}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(json.dumps(doc["summary"], indent=2))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
