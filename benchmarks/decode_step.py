"""CPU milliseconds of one engine decode step (SmolLM2 GGUF, int4 decode weights), decoders alternating in one run.

    python -m benchmarks.decode_step                      # 1 decode row: eager lean vs compiled regions
    python -m benchmarks.decode_step --rows 4 --rounds 5  # 4 rows
    python -m benchmarks.decode_step --threads 2          # two threads for the lone decode (the engine uses one)
    python -m benchmarks.decode_step --kernels            # PyTorch's int4 kernel vs the native ones (cpu_native.py),
                                                          # with and without fused q/k/v and gate/up calls, in the
                                                          # lean loop and as one native step (native_step.py)

Each variant runs `BatchedModelRunner.execute` on the same decode step (the same token rewritten at the same
position, so every call does identical work) and is timed with `time.process_time()` (CPU time of the process, every
OpenMP thread included: robust on a shared machine) and wall time (which only a quiet machine makes meaningful).
Variants alternate in rounds; the figure per variant is the median over rounds of each round's minimum. Prints one
JSON document.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _time_calls(fn, calls: int) -> tuple[float, float]:
    """(minimum process CPU ms, minimum wall ms) of `calls` calls of fn."""
    cpu = wall = float("inf")
    for _ in range(calls):
        start, start_wall = time.process_time(), time.perf_counter()
        fn()
        cpu, wall = min(cpu, time.process_time() - start), min(wall, time.perf_counter() - start_wall)
    return 1000 * cpu, 1000 * wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1, help="decode rows of the step (sequences decoding together)")
    ap.add_argument("--context", type=int, default=64, help="tokens already in each sequence's cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--two-threads", action="store_true",
                    help="also run the compiled and eager lean steps at two threads (compare by wall time, quiet box)")
    ap.add_argument("--kernels", action="store_true",
                    help="compare the 4/8-bit decode kernels instead: PyTorch's int4 (bf16 LM head), native, native "
                         "with its helper thread (eager lean steps; compare by wall time, quiet box)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20, help="calls per variant per round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from benchmarks.engine import load_model
    from models.llm.compiled_decode import build_compiled_decoder
    from models.llm.config import EngineConfig
    from models.llm.engine import HFEngine

    if args.kernels:
        return _compare_kernels(args)
    model, tokenizer, int4 = load_model("smollm2", "auto", "cpu")
    engine = HFEngine(model, tokenizer, EngineConfig(max_running=args.rows, max_model_len=args.context + 64,
                                                     compiled_decode=False), int4_weights=int4)
    runner = engine.runner
    eager = runner.fast_decoder
    compiled = build_compiled_decoder(eager)
    started = time.perf_counter()
    compiled.start(None, background=False)
    compile_s = time.perf_counter() - started
    streams = [_Stream(list(range(100 + i, 100 + i + args.context)), slot=i) for i in range(args.rows)]
    with torch.inference_mode():
        runner.execute([(s, s.num_pending) for s in streams])  # prefill
        for s in streams:
            s.num_computed = len(s.token_ids)
            s.token_ids.append(42)
        work = [(s, 1) for s in streams]
        variants = {"eager_lean": (eager, args.threads), "compiled": (compiled, args.threads),
                    "transformers_forward": (None, args.threads)}
        if args.two_threads:
            variants.update({"eager_lean_2_threads": (eager, 2), "compiled_2_threads": (compiled, 2)})
        outputs, times, walls = {}, {name: [] for name in variants}, {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (decoder, threads) in variants.items():
                torch.set_num_threads(threads)
                runner.fast_decoder = decoder
                outputs[name] = runner.execute(work)[1].float()
                cpu, wall = _time_calls(lambda: runner.execute(work), args.calls)
                times[name].append(cpu)
                walls[name].append(wall)
    report = {"command": "python -m benchmarks.decode_step " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
              "torch": torch.__version__, "compile_s": round(compile_s, 1), "compile_error": compiled.compile_error,
              "step_cpu_ms": {name: round(statistics.median(t), 2) for name, t in times.items()},
              "step_wall_ms": {name: round(statistics.median(t), 2) for name, t in walls.items()},
              "rounds_cpu_ms": {name: [round(x, 2) for x in t] for name, t in times.items()},
              "max_logit_diff_vs_transformers": {name: float((o - outputs["transformers_forward"]).abs().max())
                                                 for name, o in outputs.items()},
              "same_argmax": {name: bool(torch.equal(o.argmax(-1), outputs["transformers_forward"].argmax(-1)))
                              for name, o in outputs.items()}}
    print(json.dumps(report, indent=2))


def _compare_kernels(args) -> None:
    """Wall and CPU ms of the same lone decode step on PyTorch's int4 kernel and on the native kernels."""
    import os

    from benchmarks.engine import load_model
    from models.llm.config import EngineConfig
    from models.llm.cpu_native import HELPER_MIN_BYTES, HELPER_SPIN_US, NativeDecodeLinear
    from models.llm.engine import HFEngine
    from models.llm.native_step import NativeStepDecoder

    engines, works = {}, {}
    for name, native in (("pytorch_int4", False), ("native", True)):
        model, tokenizer, weights = load_model("smollm2", "auto", "cpu", native_decode=native)
        config = EngineConfig(max_running=args.rows, max_model_len=args.context + 64, cpu_native_helper=False)
        engines[name] = HFEngine(model, tokenizer, config, int4_weights=weights,
                                 cache_dir=os.path.expanduser(os.path.join("~", ".cache", "openserve", "cache", "llm")))
        streams = [_Stream(list(range(100 + i, 100 + i + args.context)), slot=i) for i in range(args.rows)]
        with torch.inference_mode():
            engines[name].runner.execute([(s, s.num_pending) for s in streams])  # prefill
        for s in streams:
            s.num_computed = len(s.token_ids)
            s.token_ids.append(42)
        works[name] = [(s, 1) for s in streams]
    natives = [m for m in engines["native"].model.modules() if isinstance(m, NativeDecodeLinear)]
    if not natives:
        raise SystemExit("the native kernels are unavailable here (see the log)")
    kernels = natives[0].kernels
    # name: (engine, helper min bytes, helper spin, step helper min bytes); *_step: the whole step in one native
    # call (native_step.py), the others the lean decode loop over the same kernels
    variants = {"pytorch_int4": ("pytorch_int4", 0, 0, 0), "native": ("native", 0, 0, 0),
                "native_helper": ("native", HELPER_MIN_BYTES, HELPER_SPIN_US, 0),
                "native_helper_unfused": ("native", HELPER_MIN_BYTES, HELPER_SPIN_US, 0),  # q/k/v, gate/up apart
                "native_helper_every_layer": ("native", 64 * 1024, 300, 0),  # a polling helper on every matmul
                "native_step": ("native", 0, 0, 0),
                "native_step_helper": ("native", HELPER_MIN_BYTES, HELPER_SPIN_US, 0),  # the engine's default
                "native_step_helper_every_layer": ("native", HELPER_MIN_BYTES, HELPER_SPIN_US, 64 * 1024)}
    step = engines["native"].runner.fast_decoder
    if not isinstance(step, NativeStepDecoder):
        raise SystemExit("the native decode step is unavailable here (see the log)")
    decoder = step.lean
    fused = (decoder.qkv, decoder.gate_up)
    unfused = ([None] * len(decoder.qkv), [None] * len(decoder.gate_up))

    def select(name: str, engine: str, helper: int, spin_us: int, step_helper: int):
        kernels.use_helper_thread(helper, spin_us)
        step.helper_bytes = {False: step_helper, True: step_helper}
        decoder.qkv, decoder.gate_up = unfused if name.endswith("_unfused") else fused
        if engine == "native":
            engines[engine].runner.fast_decoder = step if "_step" in name else decoder
        return engines[engine].runner, works[engine]

    # The variants alternate call by call (not in blocks): this machine's memory bandwidth drifts within seconds,
    # and a drift then falls on every variant alike. Per variant: the median and the minimum over all calls.
    times, walls, outputs = {name: [] for name in variants}, {name: [] for name in variants}, {}
    with torch.inference_mode():
        for name, spec in variants.items():
            runner, work = select(name, *spec)
            outputs[name] = runner.execute(work)[1].float()
        for _ in range(args.rounds * args.calls):
            for name, spec in variants.items():
                runner, work = select(name, *spec)
                cpu, wall = _time_calls(lambda: runner.execute(work), 1)
                times[name].append(cpu)
                walls[name].append(wall)
    kernels.use_helper_thread(0)
    step.helper_bytes = {False: 0, True: 0}
    kernels.use_step_helper(0)
    decoder.qkv, decoder.gate_up = fused
    engines["native"].runner.fast_decoder = step
    report = {"command": "python -m benchmarks.decode_step --kernels " + " ".join(
                  f"--{k} {v}" for k, v in vars(args).items() if k != "kernels"),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "native_weight_mb": round(sum(m.weight.nbytes for m in natives) / 1e6, 1),
              "step_wall_ms_median": {name: round(statistics.median(t), 2) for name, t in walls.items()},
              "step_wall_ms_min": {name: round(min(t), 2) for name, t in walls.items()},
              "step_cpu_ms_median": {name: round(statistics.median(t), 2) for name, t in times.items()},
              "steps_per_variant": args.rounds * args.calls,
              "max_logit_diff_vs_pytorch_int4": {name: float((o - outputs["pytorch_int4"]).abs().max())
                                                 for name, o in outputs.items()},
              "same_argmax": {name: bool(torch.equal(o.argmax(-1), outputs["pytorch_int4"].argmax(-1)))
                              for name, o in outputs.items()}}
    print(json.dumps(report, indent=2))


class _Stream:
    """The EngineRequest fields the runner reads."""

    def __init__(self, tokens: list[int], slot: int):
        self.token_ids, self.num_computed, self.slot = tokens, 0, slot

    @property
    def num_pending(self) -> int:
        return len(self.token_ids) - self.num_computed

    def pending_tokens(self, count: int) -> list[int]:
        return self.token_ids[self.num_computed : self.num_computed + count]


if __name__ == "__main__":
    main()
