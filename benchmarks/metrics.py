"""Per-request records and the arithmetic that turns them into a run's metrics. Pure: no I/O, no clock.

Names and definitions follow vLLM's `vllm bench serve` (vllm/benchmarks/serve.py, calculate_metrics) so figures
compare:
  TTFT   time from sending the request to the first streamed chunk that carries generated text
  TPOT   per request, (e2e latency - TTFT) / (output tokens - 1); requests with <= 1 output token are left out
         of the TPOT statistics and count as TPOT 0 for goodput, as vLLM does
  ITL    every gap between two consecutive text-carrying chunks, pooled over all requests
  E2EL   time from sending the request to the last chunk that carries generated text (streams), or to the end of
         the response body (everything else)
  goodput  requests per second that met every given SLO (TTFT, TPOT, E2EL, in ms; `value <= slo`)
Percentiles use numpy's default (linear interpolation), as vLLM does. Throughputs divide by the benchmark
duration (first request sent -> last response done), not by the sum of latencies.

One deliberate difference: vLLM's client starts TTFT and ITL at any chunk with `choices`, so a separate role chunk
or finish chunk counts as a "token". Here only chunks with text count; on this server (which sends the role chunk
right before the first token) the two agree within microseconds, and ITL is not diluted by near-zero gaps.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """What the client saw of one request. Times are seconds; `start` is relative to the run's start."""

    start: float = 0.0
    success: bool = False
    latency: float = 0.0  # E2EL
    error_kind: str | None = None  # "http_429", "timeout", "connection", "bad_response", "exception:<Type>"
    error: str = ""
    ttft: float | None = None  # streams only
    itl: list[float] = field(default_factory=list)  # streams only
    output_tokens: int = 0
    prompt_tokens: int = 0
    items: int = 1  # inputs of an embedding request, images of an image request
    ttfb: float | None = None  # time to the first byte of the body (speech)
    audio_s: float = 0.0  # seconds of audio returned (speech)

    def tpot(self) -> float | None:
        """(latency - TTFT) / (output tokens - 1); None when it is undefined (not a stream, <= 1 token)."""
        if self.ttft is None or self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def percentile(values: list[float], p: float) -> float:
    """numpy's linear-interpolation percentile; 0.0 for no values (vLLM's `np.percentile(x or 0, p)`)."""
    return float(np.percentile(values or [0.0], p))


def distribution(name: str, values_s: list[float], percentiles=PERCENTILES) -> dict[str, float]:
    """mean/median/std/pNN of seconds, reported in ms under vLLM's keys: mean_ttft_ms, p99_ttft_ms, ..."""
    ms = [v * 1000.0 for v in values_s] or [0.0]
    out = {
        f"mean_{name}_ms": float(np.mean(ms)),
        f"median_{name}_ms": float(np.median(ms)),
        f"std_{name}_ms": float(np.std(ms)),
    }
    for p in percentiles:
        out[f"p{_pname(p)}_{name}_ms"] = float(np.percentile(ms, p))
    return out


def _pname(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


def errors_by_kind(records: list[RequestRecord]) -> dict[str, int]:
    return dict(Counter(r.error_kind or "unknown" for r in records if not r.success))


def is_good(record: RequestRecord, slos_ms: dict[str, float]) -> bool:
    """True when a successful request meets every SLO; TPOT counts as 0 for <= 1 output token (vLLM)."""
    if not record.success:
        return False
    observed = {"ttft": record.ttft or 0.0, "tpot": record.tpot() or 0.0, "e2el": record.latency}
    return all(observed[name] * 1000.0 <= limit for name, limit in slos_ms.items())


def base_metrics(records: list[RequestRecord], duration_s: float, slos_ms: dict[str, float] | None) -> dict:
    """Counts, request throughput and goodput, E2EL distribution, errors: what every modality reports."""
    ok = [r for r in records if r.success]
    duration = max(duration_s, 1e-9)
    out = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": errors_by_kind(records),
        "request_throughput": len(ok) / duration,
    }
    if slos_ms:
        out["request_goodput"] = sum(is_good(r, slos_ms) for r in ok) / duration
        out["goodput_slos_ms"] = dict(slos_ms)
    out.update(distribution("e2el", [r.latency for r in ok]))
    return out


def chat_metrics(records: list[RequestRecord], duration_s: float, slos_ms: dict[str, float] | None = None) -> dict:
    """vLLM's serving metrics for chat/completions: token throughputs, TTFT, TPOT, ITL, E2EL, goodput."""
    ok = [r for r in records if r.success]
    duration = max(duration_s, 1e-9)
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    out = base_metrics(records, duration_s, slos_ms)
    out.update(
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        output_throughput=total_out / duration,
        total_token_throughput=(total_in + total_out) / duration,
    )
    out.update(distribution("ttft", [r.ttft for r in ok if r.ttft is not None]))
    out.update(distribution("tpot", [t for t in (r.tpot() for r in ok) if t is not None]))
    out.update(distribution("itl", [gap for r in ok for gap in r.itl]))
    return out


def embedding_metrics(records: list[RequestRecord], duration_s: float, slos_ms: dict | None = None) -> dict:
    """Inputs (sentences) per second and tokens per second on top of the base metrics."""
    ok = [r for r in records if r.success]
    duration = max(duration_s, 1e-9)
    out = base_metrics(records, duration_s, slos_ms)
    out.update(
        total_inputs=sum(r.items for r in ok),
        input_throughput=sum(r.items for r in ok) / duration,
        total_input_tokens=sum(r.prompt_tokens for r in ok),
        total_token_throughput=sum(r.prompt_tokens for r in ok) / duration,
    )
    return out


def image_metrics(records: list[RequestRecord], duration_s: float, slos_ms: dict | None = None) -> dict:
    ok = [r for r in records if r.success]
    out = base_metrics(records, duration_s, slos_ms)
    out.update(total_images=sum(r.items for r in ok), image_throughput=sum(r.items for r in ok) / max(duration_s, 1e-9))
    return out


def speech_metrics(records: list[RequestRecord], duration_s: float, slos_ms: dict | None = None) -> dict:
    """rtfx = seconds of audio produced per wall-clock second (vLLM's name; > 1 is faster than real time);
    per-request RTF = latency / audio seconds (< 1 is faster than real time); TTFB = time to the first body byte."""
    ok = [r for r in records if r.success]
    audio = sum(r.audio_s for r in ok)
    out = base_metrics(records, duration_s, slos_ms)
    out.update(total_audio_s=audio, rtfx=audio / max(duration_s, 1e-9))
    out.update(distribution("ttfb", [r.ttfb for r in ok if r.ttfb is not None]))
    rtf = [r.latency / r.audio_s for r in ok if r.audio_s > 0]
    out.update({f"p{p}_rtf": percentile(rtf, p) for p in PERCENTILES}, mean_rtf=float(np.mean(rtf or [0.0])))
    return out


METRICS = {
    "chat": chat_metrics,
    "completions": chat_metrics,
    "embeddings": embedding_metrics,
    "images": image_metrics,
    "speech": speech_metrics,
}


def client_load(cpu_s: float, wall_s: float, machine_busy: float | None, cores: int) -> dict:
    """The load generator's own cost. Its event loop is one thread: near one busy core it cannot send faster,
    so the server looks slower than it is (`client_bound`)."""
    core_share = cpu_s / max(wall_s, 1e-9)
    out = {
        "client_cpu_s": cpu_s,
        "client_core_utilization": core_share,  # of one core; the asyncio loop cannot use more
        "client_machine_share": core_share / max(cores, 1),
        "client_bound": core_share >= 0.7,
    }
    if machine_busy is not None:
        out["machine_cpu_busy"] = machine_busy  # all processes, 0..1 of every core
    return out
