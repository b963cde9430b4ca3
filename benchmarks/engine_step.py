"""CPU milliseconds of one engine decode step at N running rows, split by phase, per sampling mode; with
--compare-tree, another checkout's sampler (its sampler.py and draw.py) alternates with this tree's in one process.

    python -m benchmarks.engine_step                                    # 16 rows, SmolLM2 (packaged GGUF), 1 thread
    python -m benchmarks.engine_step --compare-tree main=/work/main     # this tree's sampler vs main's, alternating

Each round runs every (sampler, mode) once, in turn: 16 requests are prefilled, then --steps decode steps are
timed. Modes: greedy, temperature 0.7 (top_p 1: what the peer benchmarks' clients send), temperature 0.7 with
top_p 0.9 (as many applications send). Phases, in process CPU time (every thread; `_thr`: the calling thread only):
`schedule`, `execute` (the forward, the LM head included), `head` (the LM head alone), `sample`, `postprocess`
(appending tokens, stop rules, detokenization), `total` (the whole step). On a shared machine CPU time, not wall
time, is the figure to compare; OpenMP threads spin unless OMP_WAIT_POLICY=PASSIVE, so run with that (and one
thread, the default here) for honest CPU figures. Prints one JSON document: medians over --rounds.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch

MODES = {"greedy": {"temperature": 0.0}, "t0.7": {"temperature": 0.7}, "t0.7_top_p0.9": {"temperature": 0.7,
                                                                                          "top_p": 0.9}}


def load_sampler_class(tree: str):
    """BatchSampler of another checkout: its draw.py and sampler.py loaded under private names."""
    saved = sys.modules.get("models.llm.draw")
    try:
        sys.modules["models.llm.draw"] = _load(os.path.join(tree, "models", "llm", "draw.py"), "_compare_draw")
        return _load(os.path.join(tree, "models", "llm", "sampler.py"), "_compare_sampler").BatchSampler
    finally:
        sys.modules["models.llm.draw"] = saved


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class PhaseTimer:
    """Wraps methods so that each call adds its process and thread CPU seconds to `spent[key]`."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def wrap(self, owner, name: str, key: str) -> None:
        method = getattr(owner, name)

        def timed(*args, **kwargs):
            process, thread = time.process_time(), time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent[key] = self.spent.get(key, 0.0) + time.process_time() - process
                self.spent[key + "_thr"] = self.spent.get(key + "_thr", 0.0) + time.thread_time() - thread

        setattr(owner, name, timed)


def measure(engine, timer: PhaseTimer, prompts: list[list[int]], params, steps: int, tag: str) -> dict:
    """Per-step CPU ms of `steps` decode steps of len(prompts) rows (prefill done first, untimed)."""
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", prompt, params)
    while engine.scheduler.waiting or not all(r.is_decoding for r in engine.scheduler.running.values()):
        engine.step()
    engine.step()
    timer.spent.clear()
    start = time.process_time()
    for _ in range(steps):
        engine.step()
    total = time.process_time() - start
    for request_id in engine.unfinished_request_ids():
        engine.abort(request_id)
    row = {key: value / steps * 1000 for key, value in timer.spent.items()}
    row["total"] = total / steps * 1000
    return row


def main() -> None:
    from benchmarks.engine import load_model, make_prompts
    from benchmarks.server import add_compare_tree, source_trees
    from models.llm.config import EngineConfig
    from models.llm.engine import HFEngine
    from models.llm.sampler import BatchSampler
    from models.llm.types import SamplingParams

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    add_compare_tree(ap, "another checkout whose sampler alternates with this tree's (e.g. main=/work/main)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    samplers = {"this tree": BatchSampler}
    samplers.update({name: load_sampler_class(folder) for name, folder in source_trees(args.compare_tree)[1:]})
    model, tokenizer, int4 = load_model("smollm2", "auto", "cpu")
    prompts = make_prompts(tokenizer, args.rows, 64, model.config.vocab_size)
    engine = HFEngine(model, tokenizer, EngineConfig(max_model_len=64 + args.steps + 64, max_running=args.rows),
                      int4_weights=int4)
    timer = PhaseTimer()
    for owner, name, key in [(engine.scheduler, "schedule", "schedule"), (engine.runner, "execute", "execute"),
                             (engine.scheduler, "postprocess", "postprocess")]:
        timer.wrap(owner, name, key)
    if getattr(engine.runner, "fast_decoder", None) is not None:
        timer.wrap(engine.runner.fast_decoder, "head", "head")
    rows: dict[str, dict[str, list[dict]]] = {s: {m: [] for m in MODES} for s in samplers}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        turn = list(samplers.items())
        for sampler_name, cls in turn if round_ % 2 else turn[::-1]:  # each sampler first in every other round
            engine.sampler = cls(engine.max_running, engine.vocab_size, engine.device)
            timer.wrap(engine.sampler, "sample", "sample")
            for mode, knobs in MODES.items():
                params = SamplingParams(max_tokens=args.steps + 8, ignore_eos=True, seed=round_, **knobs)
                row = measure(engine, timer, prompts, params, args.steps, f"{sampler_name}{round_}{mode}")
                if round_:
                    rows[sampler_name][mode].append(row)
    report = {"command": " ".join(["python -m benchmarks.engine_step", *sys.argv[1:]]), "rows": args.rows,
              "steps": args.steps, "rounds": args.rounds, "threads": args.threads,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_avg": os.getloadavg()[0],
              "median_cpu_ms_per_step": {s: {m: {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
                                             for m, runs in modes.items()} for s, modes in rows.items()}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
