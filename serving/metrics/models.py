"""Instrumentation hooks for model replicas: a generation stream observed on its way out, engine gauges read at
snapshot time, and a batch merger's pass sizes and queue. Each is one call from the deployment."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from serving.metrics import definitions as m


async def observe_generation(model: str, batches: AsyncIterator[list]) -> AsyncIterator[list]:
    """Pass `batches` (lists of GenerationChunk) through, recording TTFT, time per output token, prompt and
    generated tokens and each choice's finish reason (`abort` when it ended without one). A request refused
    before its first token (bad input, overload) records nothing: it never ran."""
    start = time.perf_counter()
    first = last = None
    prompt, generated, reasons = 0, {}, {}
    try:
        async for chunks in batches:
            last = time.perf_counter()
            if first is None:
                first = last
                m.TTFT.labels(model).observe(first - start)
            for chunk in chunks:
                prompt = max(prompt, chunk.prompt_tokens)
                generated[chunk.index] = max(generated.get(chunk.index, 0), chunk.completion_tokens)
                if chunk.finish_reason:
                    reasons[chunk.index] = chunk.finish_reason
            yield chunks
    finally:
        if first is not None:
            _record_generation(model, prompt, generated, reasons, last - first)


def _record_generation(model: str, prompt: int, generated: dict[int, int], reasons: dict[int, str],
                       decode_s: float) -> None:
    m.PROMPT_TOKENS.labels(model).inc(prompt)
    m.GENERATION_TOKENS.labels(model).inc(sum(generated.values()))
    for index in generated:
        m.REQUEST_SUCCESS.labels(model, reasons.get(index, "abort")).inc()
    longest = max(generated.values(), default=0)
    if longest > 1:
        m.TPOT.labels(model).observe(decode_s / (longest - 1))


@dataclass(frozen=True)
class EngineLoad:
    """What the engine gauges show: sequences decoding, waiting for a slot, and the KV cache's used fraction."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


def engine_load(stats: Any) -> EngineLoad:
    """An EngineLoad from an engine's stats snapshot (models.llm.types.EngineStats: running, waiting, KV slots used
    and total); no snapshot yet (an engine process that has not reported): nothing running."""
    if stats is None:
        return EngineLoad()
    return EngineLoad(stats.running, stats.waiting, stats.kv_slots_used / max(1, stats.kv_slots_total))


def watch_engine(model: str, load: Callable[[], EngineLoad]) -> None:
    """Engine gauges for `model`, read from `load()` whenever this process' metrics are collected."""
    m.RUNNING.labels(model).set_function(lambda: load().running)
    m.WAITING.labels(model).set_function(lambda: load().waiting)
    m.KV_USAGE.labels(model).set_function(lambda: load().kv_cache_usage)


def watch_merger(model: str, merger: Any) -> Callable[[int], None]:
    """Queue depth of a BatchMerger (`merger.pending()`), and the callback it calls with each pass' request count."""
    m.BATCH_QUEUE.labels(model).set_function(merger.pending)
    return m.BATCH_SIZE.labels(model).observe


def unwatch_merger(model: str) -> None:
    """Stop showing the queue depth of `model`'s merger (the model left this process; its pass sizes stay counted)."""
    try:
        m.BATCH_QUEUE.remove(model)
    except KeyError:  # never watched here
        pass
