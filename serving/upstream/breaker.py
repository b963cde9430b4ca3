"""CircuitBreaker: stop calling an upstream that keeps failing, let a probe through now and then, close on success.

Policy:
  1. closed: every call passes. A failure opens the circuit when it is the `failures`-th in a row, or when the
     calls of the last `window_s` seconds number at least `min_requests` and a share of `error_rate` or more failed.
  2. open: calls are refused at once (CircuitOpenError, Retry-After = the seconds left) for `open_s`; then, or as
     soon as an active health check succeeds, the circuit is half-open.
  3. half-open: up to `half_open_probes` calls pass at once; the first to succeed closes the circuit, the first to
     fail opens it again for another `open_s`.
Outcomes of calls let through before the last change of state move nothing (a slow call from before the circuit
opened cannot close it). Not thread-safe: one event loop drives it.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from serving.errors import CircuitOpenError
from serving.upstream.config import BreakerConfig

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


@dataclass(frozen=True)
class Permit:
    """A call let through: whether it is a half-open probe, and the state's generation when it started."""

    probe: bool
    generation: int


class CircuitBreaker:
    def __init__(self, settings: BreakerConfig, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str], None] | None = None):
        self.settings = settings
        self.clock = clock
        self.on_change = on_change  # (old state, new state): metrics, logs, tests
        self._state = CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._consecutive = 0
        self._window: deque[tuple[float, bool]] = deque()  # (when, failed) of the closed state's recent calls
        self._window_failures = 0  # kept with the window: no sum over it per call (thousands at high rates)
        self._probes = 0
        self.opened_total = 0
        self.last_failure: str | None = None

    @property
    def state(self) -> str:
        if self._state == OPEN and self.clock() - self._opened_at >= self.settings.open_s:
            self._move(HALF_OPEN)
        return self._state

    def retry_after(self) -> float:
        """Seconds until an open circuit half-opens (0 when it is not open)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.settings.open_s - self.clock())

    def acquire(self) -> Permit:
        """Let a call through or raise CircuitOpenError (503 + Retry-After)."""
        state = self.state
        if state == CLOSED:
            return Permit(False, self._generation)
        if state == HALF_OPEN and self._probes < self.settings.half_open_probes:
            self._probes += 1
            return Permit(True, self._generation)
        wait = self.retry_after() if state == OPEN else self.settings.open_s
        raise CircuitOpenError(  # its last failure is in /admin/upstreams, not in what callers read
            f"the upstream is failing: its circuit is {state.replace('_', '-')}", retry_after=max(1.0, wait)
        )

    def success(self, permit: Permit) -> None:
        self._end(permit)
        if permit.generation != self._generation:
            return
        if self._state == HALF_OPEN:
            self._move(CLOSED)
        elif self._state == CLOSED:
            self._consecutive = 0
            self._record(failed=False)

    def failure(self, permit: Permit, reason: str) -> None:
        self._end(permit)
        self.last_failure = reason
        if permit.generation != self._generation:
            return
        if self._state == HALF_OPEN:
            self._move(OPEN)
        elif self._state == CLOSED:
            self._consecutive += 1
            failed, calls = self._record(failed=True)
            s = self.settings
            if self._consecutive >= s.failures or (calls >= s.min_requests and failed >= s.error_rate * calls):
                self._move(OPEN)

    def release(self, permit: Permit) -> None:
        """The call ended with no verdict on the upstream (the caller left first)."""
        self._end(permit)

    def health(self, ok: bool, reason: str = "") -> None:
        """An active health check's result: success half-opens an open circuit; failure counts as a failed call."""
        if ok:
            if self.state == OPEN:
                self._move(HALF_OPEN)
            return
        self.failure(Permit(self.state == HALF_OPEN, self._generation), reason)

    def snapshot(self) -> dict:
        state = self.state
        self._prune()
        return {
            "state": state,
            "consecutive_failures": self._consecutive,
            "window_calls": len(self._window),
            "window_failures": self._window_failures,
            "retry_after_s": round(self.retry_after(), 3),
            "opened_total": self.opened_total,
            "last_failure": self.last_failure,
        }

    def _end(self, permit: Permit) -> None:
        if permit.probe and permit.generation == self._generation:
            self._probes -= 1

    def _record(self, failed: bool) -> tuple[int, int]:
        """Add a call to the window; (failed, calls) in it."""
        self._window.append((self.clock(), failed))
        self._window_failures += failed
        self._prune()
        return self._window_failures, len(self._window)

    def _prune(self) -> None:
        horizon = self.clock() - self.settings.window_s
        while self._window and self._window[0][0] < horizon:
            self._window_failures -= self._window.popleft()[1]

    def _move(self, new: str) -> None:
        old, self._state = self._state, new
        self._generation += 1
        self._probes = 0
        if new == OPEN:
            self._opened_at = self.clock()
            self.opened_total += 1
        if new == CLOSED:
            self._consecutive = 0
            self._window.clear()
            self._window_failures = 0
        if self.on_change is not None:
            self.on_change(old, new)
