"""The load generator: fixed concurrency or a Poisson (gamma) request rate, one aiohttp session, a progress bar,
and the client's own CPU time so a report can say when the client, not the server, was the bottleneck."""
from __future__ import annotations

import asyncio
import itertools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp
import numpy as np
import psutil

from benchmarks.metrics import RequestRecord

Send = Callable[[aiohttp.ClientSession, str, dict], Awaitable[RequestRecord]]


@dataclass(frozen=True)
class LoadSpec:
    """concurrency: most requests in flight (None: no limit); request_rate: requests/s, inf sends back to back."""

    concurrency: int | None = 1
    request_rate: float = math.inf
    burstiness: float = 1.0  # 1: Poisson arrivals; < 1 burstier, > 1 more even (gamma intervals, as vLLM)
    seed: int = 0
    timeout_s: float = 600.0
    duration_s: float | None = None  # closed loop: keep cycling through the payloads until this much time passed


@dataclass
class RunResult:
    records: list[RequestRecord]
    duration_s: float
    client_cpu_s: float
    machine_busy: float | None  # 0..1 of all cores, every process on the machine
    extra: dict = field(default_factory=dict)


def arrival_offsets(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Send times (s from the start): gamma intervals of mean 1/rate, rescaled so the last is at n/rate (vLLM)."""
    if math.isinf(rate):
        return [0.0] * n
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    times = np.cumsum(gaps)
    times *= (n / rate) / times[-1]
    return times.tolist()


class Progress:
    """A one-line progress bar on stderr: done/total (or elapsed/duration), requests/s, errors."""

    def __init__(self, total: int, label: str, enabled: bool = True, duration_s: float | None = None):
        self.total, self.label, self.duration_s = total, label, duration_s
        self.enabled, self.final_line = enabled and sys.stderr.isatty(), enabled  # no \r redraws into a log file
        self.done = self.errors = 0
        self.started = time.perf_counter()
        self._drawn = 0.0

    def update(self, record: RequestRecord) -> None:
        self.done += 1
        self.errors += not record.success
        now = time.perf_counter()
        if self.enabled and now - self._drawn > 0.2:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float, width: int = 30) -> None:
        elapsed = now - self.started
        if self.duration_s:
            fraction, count = min(1.0, elapsed / self.duration_s), f"{elapsed:.0f}/{self.duration_s:.0f} s"
        else:
            fraction, count = self.done / max(self.total, 1), f"{self.done}/{self.total}"
        bar = "#" * int(width * fraction) + "-" * (width - int(width * fraction))
        rate = self.done / max(elapsed, 1e-9)
        sys.stderr.write(f"\r{self.label:<28} [{bar}] {count} {rate:8.1f} req/s {self.errors} err ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.final_line:
            self._draw(time.perf_counter())
            sys.stderr.write("\n")


async def _run_closed_loop(session, send: Send, url: str, payloads: list[dict], spec: LoadSpec, progress) -> list:
    """`concurrency` coroutines each send the next payload as soon as their previous request is done; with a
    duration, payloads are reused round-robin until it is over."""
    records: list[RequestRecord] = []
    t0 = time.perf_counter()
    indices = itertools.count() if spec.duration_s else iter(range(len(payloads)))

    async def worker() -> None:
        for index in indices:
            sent = time.perf_counter() - t0
            if spec.duration_s and sent >= spec.duration_s:
                return
            record = await send(session, url, payloads[index % len(payloads)])
            record.start = sent
            records.append(record)
            progress.update(record)

    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    return records


async def _run_open_loop(session, send: Send, url: str, payloads: list[dict], spec: LoadSpec, progress) -> list:
    """Send at the scheduled times; a semaphore caps requests in flight when spec.concurrency is set."""
    limit = asyncio.Semaphore(spec.concurrency) if spec.concurrency else None
    offsets = arrival_offsets(len(payloads), spec.request_rate, spec.burstiness, spec.seed)
    t0 = time.perf_counter()

    async def one(payload: dict) -> RequestRecord:
        if limit is None:
            return await _timed(payload)
        async with limit:
            return await _timed(payload)

    async def _timed(payload: dict) -> RequestRecord:
        sent = time.perf_counter() - t0
        record = await send(session, url, payload)
        record.start = sent
        progress.update(record)
        return record

    tasks = []
    for payload, at in zip(payloads, offsets):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(payload)))
    return list(await asyncio.gather(*tasks))


def new_session(spec: LoadSpec, headers: dict | None = None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=spec.concurrency or 0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers or {})


async def run_load(
    send: Send, url: str, payloads: list[dict], spec: LoadSpec, label: str = "", progress: bool = True,
    headers: dict | None = None,
) -> RunResult:
    """Send every payload to `url` under `spec`; returns the records and what the run cost the client."""
    bar = Progress(len(payloads), label, enabled=progress, duration_s=spec.duration_s)
    async with new_session(spec, headers) as session:
        cpu0, machine0, t0 = time.process_time(), psutil.cpu_times(), time.perf_counter()
        if math.isinf(spec.request_rate) and spec.concurrency:
            records = await _run_closed_loop(session, send, url, payloads, spec, bar)
        else:
            records = await _run_open_loop(session, send, url, payloads, spec, bar)
        duration = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        busy = _busy_fraction(machine0, psutil.cpu_times())
    bar.close()
    return RunResult(records, duration, cpu, busy)


def _busy_fraction(before, after) -> float | None:
    total = sum(after) - sum(before)
    if total <= 0:
        return None
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    return max(0.0, min(1.0, 1.0 - idle / total))
