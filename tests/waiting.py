"""Waiting in tests: on a predicate, with a deadline (never a bare sleep as synchronisation)."""
from __future__ import annotations

import asyncio
import time
from typing import Callable


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "the condition") -> None:
    """Return as soon as `predicate()` holds; fail the test if it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.002)  # hands the loop over (the engine thread posts through it); not a timing
