"""Per-key limits in the ingress: requests per minute, tokens per minute, concurrent requests.

Each per-minute limit is a bucket of `limit` that refills continuously at limit/60 per second, as OpenAI's limits
behave (60 RPM: a burst of 60, then one a second). A request takes one request at admission; tokens are only known
once it ends, so admission needs the token bucket above zero and the request's tokens are charged when it ends
(the bucket may go below zero; the key then waits until it refills). Everything runs on the ingress' one event
loop, so admission is exact under any concurrency without a lock. With several ingress replicas each one counts
on its own (a key could get up to limit x replicas): see docs/operations.md.
"""
from __future__ import annotations

import math
import time
from typing import Callable

from serving.errors import RateLimitExceededError
from serving.keys.records import KeyLimits

Clock = Callable[[], float]


class Bucket:
    """`per_minute` units, refilled continuously; `level` may go negative (a debt paid back by refilling)."""

    def __init__(self, per_minute: int, now: float):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # units per second
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` units are there (0: there now). Call refill first."""
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def remaining(self) -> int:
        return max(0, math.floor(self.level))

    def reset_s(self) -> float:
        """Seconds until full again."""
        return (self.capacity - self.level) / self.rate


def duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


class KeyLimiter:
    """The limits of one key. `admit()` raises RateLimitExceededError or takes a request (and a concurrency slot);
    each admitted request must be followed by one `release(tokens)`."""

    def __init__(self, limits: KeyLimits, clock: Clock = time.monotonic):
        self.limits = limits
        self.clock = clock
        now = clock()
        self.requests = Bucket(limits.requests_per_minute, now) if limits.requests_per_minute else None
        self.tokens = Bucket(limits.tokens_per_minute, now) if limits.tokens_per_minute else None
        self.in_flight = 0

    def admit(self) -> None:
        now = self.clock()
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)
        if self.limits.max_concurrent is not None and self.in_flight >= self.limits.max_concurrent:
            raise RateLimitExceededError(
                f"Rate limit reached: this key may have {self.limits.max_concurrent} requests in flight at once; "
                "retry when one has finished.", retry_after=1.0, kind="requests", limit_headers=self.headers(),
            )
        if self.tokens is not None and self.tokens.level < 1:
            wait = self.tokens.wait_for(1)
            raise RateLimitExceededError(
                f"Rate limit reached for tokens per min (TPM): Limit {self.limits.tokens_per_minute}. "
                f"Please try again in {duration(wait)}.", retry_after=wait, kind="tokens", limit_headers=self.headers(),
            )
        if self.requests is not None:
            wait = self.requests.wait_for(1)
            if wait > 0:
                raise RateLimitExceededError(
                    f"Rate limit reached for requests per min (RPM): Limit {self.limits.requests_per_minute}. "
                    f"Please try again in {duration(wait)}.", retry_after=wait, kind="requests",
                    limit_headers=self.headers(),
                )
            self.requests.level -= 1
        self.in_flight += 1

    def release(self, tokens: int) -> None:
        """The request ended having used `tokens`: free its slot and charge them."""
        self.in_flight -= 1
        if self.tokens is not None and tokens:
            self.tokens.refill(self.clock())
            self.tokens.level -= tokens

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the limits this key has."""
        out = {}
        for kind, bucket, limit in (("requests", self.requests, self.limits.requests_per_minute),
                                    ("tokens", self.tokens, self.limits.tokens_per_minute)):
            if bucket is not None:
                out[f"x-ratelimit-limit-{kind}"] = str(limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining())
                out[f"x-ratelimit-reset-{kind}"] = duration(bucket.reset_s())
        return out
