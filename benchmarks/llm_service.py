"""The LLM service's own cost per token, without a server: concurrent streams through LLMService over the fake
engine (no step delay), with the engine in process and in an engine process.

    python -m benchmarks.llm_service
    python -m benchmarks.llm_service --streams 16 --tokens 200 --repeats 5

Reports, per placement and repeat, the CPU milliseconds this process spent per 1000 streamed tokens (the service's
caller side and engine thread, plus the fake engine when it runs in process) and tokens/s. One JSON document.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time

from models.llm.fake import FakeEngine
from models.llm.types import SamplingParams
from serving.clients import GenerationRequest
from serving.services.engine_core import LocalEngine
from serving.services.engine_process import EngineProcess
from serving.services.llm import LLMService

_ids = itertools.count()


async def one_stream(service: LLMService, tokens: int) -> int:
    request = GenerationRequest(f"b{next(_ids)}", SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0),
                                messages=[{"role": "user", "content": "a question"}])
    return sum([len(batch) async for batch in service.generate_batches(request)])


async def measure(service: LLMService, streams: int, tokens: int) -> dict:
    await asyncio.gather(*(one_stream(service, 8) for _ in range(4)))  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    total = sum(await asyncio.gather(*(one_stream(service, tokens) for _ in range(streams))))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"tokens": total, "cpu_ms_per_1k_tokens": round(1e6 * cpu / total, 1), "tokens_per_s": round(total / wall)}


def run(args) -> dict:
    placements = {
        "in_process": lambda: LocalEngine(FakeEngine(max_model_len=4096, max_running=args.streams)),
        "engine_process": lambda: EngineProcess(FakeEngine, (None, 4096, args.streams, args.streams, 0.0)),
    }
    out = {"streams": args.streams, "tokens_per_stream": args.tokens}
    for name, start in placements.items():
        service = LLMService(start)
        try:
            runs = [asyncio.run(measure(service, args.streams, args.tokens)) for _ in range(args.repeats)]
        finally:
            service.shutdown()
        out[name] = {"runs": runs, "median_cpu_ms_per_1k_tokens":
                     statistics.median(r["cpu_ms_per_1k_tokens"] for r in runs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    print(json.dumps(run(ap.parse_args()), indent=2))


if __name__ == "__main__":
    main()
