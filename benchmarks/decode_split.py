"""Decode steps alone, with and without the split of decode attention by context length, alternating in one process.

    python -m benchmarks.decode_split                        # SmolLM2, 15 streams of 64 tokens + one of 2000
    python -m benchmarks.decode_split --long-len 4000 --rounds 8

All prompts are prefilled first; then rounds of `--steps` decode steps alternate between the split (the default)
and one SDPA call over the longest context (`attention.MIN_SPLIT_SAVING` set out of reach), in the same process
and on the same requests, so that both see the same contexts. Prints one JSON: ms per step (wall and CPU), medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from benchmarks.engine import load_model, make_prompts
from models.llm import attention
from models.llm.config import EngineConfig
from models.llm.engine import HFEngine
from models.llm.types import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--short-len", type=int, default=64)
    ap.add_argument("--long-len", type=int, default=2000, help="the prompt of one stream (0: all short)")
    ap.add_argument("--steps", type=int, default=8, help="decode steps per round")
    ap.add_argument("--rounds", type=int, default=6, help="rounds of each mode, alternating")
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model, tokenizer, int4 = load_model("smollm2", "auto", "cpu")
    vocab = model.config.vocab_size
    prompts = make_prompts(tokenizer, args.streams, args.short_len, vocab)
    if args.long_len:
        prompts[args.streams // 2] = make_prompts(tokenizer, 1, args.long_len, vocab)[0]
    budget = 2 * args.rounds * args.steps + 8
    config = EngineConfig(max_model_len=max(args.short_len, args.long_len) + budget, max_running=args.streams,
                          prefix_caching=False)
    engine = HFEngine(model, tokenizer, config, int4_weights=int4)
    params = SamplingParams(temperature=0.0, max_tokens=budget, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    while engine.scheduler.waiting or any(not r.is_decoding for r in engine.scheduler.running.values()):
        engine.step()
    default = attention.MIN_SPLIT_SAVING
    times: dict[str, list[tuple[float, float]]] = {"split": [], "one_call": []}
    load_before = os.getloadavg()[0]
    for round_ in range(args.rounds):
        for mode in ("split", "one_call") if round_ % 2 else ("one_call", "split"):
            attention.MIN_SPLIT_SAVING = default if mode == "split" else float("inf")
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                engine.step()
            times[mode].append((1000 * (time.perf_counter() - wall) / args.steps,
                                1000 * (time.process_time() - cpu) / args.steps))
    report = {"command": "python -m benchmarks.decode_split " + " ".join(sys.argv[1:]), "streams": args.streams,
              "short_len": args.short_len, "long_len": args.long_len, "load_avg_before": load_before,
              "load_avg_after": os.getloadavg()[0]}
    for mode, values in times.items():
        report[mode] = {"wall_ms_per_step": round(statistics.median(w for w, _ in values), 1),
                        "cpu_ms_per_step": round(statistics.median(c for _, c in values), 1)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
