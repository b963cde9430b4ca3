"""The counters an engine keeps (read through `stats()` as an EngineStats), and a periodic throughput log line."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0  # seconds of activity between two throughput lines (INFO)


@dataclass
class StepCounters:
    """Cumulative counts since the engine started; `record` also logs throughput every LOG_INTERVAL_S busy."""

    steps: int = 0
    busy_s: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    finished_requests: int = 0
    aborted_requests: int = 0
    _window: "ThroughputWindow" = field(default_factory=lambda: ThroughputWindow(), repr=False)

    def record(self, start: float, prompt_tokens: int, generated: int, finished: int, running: int,
               waiting: int) -> None:
        """Count one step that began at `start` (time.perf_counter) and ends now."""
        now = time.perf_counter()
        self.steps += 1
        self.busy_s += now - start
        self.prompt_tokens += prompt_tokens
        self.generated_tokens += generated
        self.finished_requests += finished
        self._window.record(start, now, prompt_tokens, generated, running, waiting)


class ThroughputWindow:
    """Logs, every LOG_INTERVAL_S of activity, the step rate, token throughput and step time (INFO)."""

    def __init__(self):
        self._reset(time.perf_counter())

    def record(self, start: float, now: float, tokens_in: int, tokens_out: int, running: int, waiting: int) -> None:
        if start - self.last > LOG_INTERVAL_S:  # idle since the last step: start a new window
            self._reset(start)
        self.last = now
        self.steps += 1
        self.busy_s += now - start
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        if now - self.since >= LOG_INTERVAL_S:
            elapsed = now - self.since
            log.info("engine: %.1f steps/s, %.1f ms/step, %.0f prompt tokens/s, %.0f tokens/s out, %d running, "
                     "%d waiting", self.steps / elapsed, 1000 * self.busy_s / self.steps, self.tokens_in / elapsed,
                     self.tokens_out / elapsed, running, waiting)
            self._reset(now)

    def _reset(self, now: float) -> None:
        self.since, self.last, self.steps, self.busy_s, self.tokens_in, self.tokens_out = now, now, 0, 0.0, 0, 0
