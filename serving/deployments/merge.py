"""The one batching mechanism of the embedding, image and speech replicas: one forward pass at a time, fed with
every call that arrived meanwhile.

Ray Serve's `@serve.batch` forms a batch on its timeout whether or not the model is free, which under load cut the
work into many small passes queued one behind the other; callers submit straight to the merger instead. Why and
the measurements that chose it: docs/batching.md.
"""
from __future__ import annotations

import asyncio
import inspect
from collections import deque
from typing import Any, Awaitable, Callable


class BatchMerger:
    """`await merger.submit(item)` -> the item's result, computed by `run(items)` in a worker thread (or awaited,
    when `run` is a coroutine function), at most `max_runs` runs at a time (default one). A run takes the pending
    items in arrival order, up to `max_items`. After a run of several items the next one waits up to `wait_s` for
    more (requests that came as a group come again as one); after a run of one it does not (a lone client never
    waits for companions that will not come).

    Ray's batch contract: `run` must return one result per item, else every caller of that run gets an error; if
    `run` raises, every caller of that run gets the exception. A caller that left (its `submit` was cancelled, as
    Serve does when the client hung up) is dropped before its run starts."""

    def __init__(self, run: Callable[[list], list] | Callable[[list], Awaitable[list]], max_items: int,
                 wait_s: float = 0.0, on_pass: Callable[[int], None] | None = None, max_runs: int = 1):
        self.run = run
        self.max_items = max_items
        self.wait_s = wait_s
        self.on_pass = on_pass  # told each pass' item count (the batch-size metric)
        self.max_runs = max_runs
        self.last_pass_items = 0
        self._pending: deque[tuple[Any, asyncio.Future]] = deque()
        self._arrived = asyncio.Event()
        self._drainers: list[asyncio.Task] = []
        self._awaited = inspect.iscoroutinefunction(run)

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._arrived.set()
        self._drainers = [d for d in self._drainers if not d.done()]
        if len(self._drainers) < self.max_runs:
            self._drainers.append(asyncio.get_running_loop().create_task(self._drain()))
        return await future

    def pending(self) -> int:
        """Items waiting for a run whose caller is still there."""
        return sum(1 for _, future in self._pending if not future.done())

    def running(self) -> int:
        """Runs started or in flight (at most `max_runs`)."""
        return sum(1 for d in self._drainers if not d.done())

    async def _drain(self) -> None:
        taken: list[tuple[Any, asyncio.Future]] = []
        try:
            while self._pending:
                if self.wait_s > 0 and self.last_pass_items > 1:
                    await self._fill(self.wait_s)
                taken = self._take()
                if taken:
                    await self._run(taken)
                taken = []
        except asyncio.CancelledError:  # the replica is shutting down: nobody will run what waits
            for _, future in [*taken, *self._pending]:
                future.cancel()
            self._pending.clear()
            raise

    async def _run(self, taken: list[tuple[Any, asyncio.Future]]) -> None:
        """One pass over `taken`; each caller gets its result, or the pass's exception."""
        items = [item for item, _ in taken]
        self.last_pass_items = len(items)
        if self.on_pass is not None:
            self.on_pass(len(items))
        try:
            results = await (self.run(items) if self._awaited else asyncio.to_thread(self.run, items))
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        except Exception as e:  # noqa: BLE001 - every caller of this run hears of it
            for _, future in taken:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), result in zip(taken, results):
            if not future.done():  # a caller that left during the run just does not get its result
                future.set_result(result)

    async def _fill(self, wait_s: float) -> None:
        """Until `max_items` callers wait or `wait_s` has passed."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while self.pending() < self.max_items:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[tuple[Any, asyncio.Future]]:
        """Up to `max_items` pending items whose caller is still there; the others are dropped."""
        taken = []
        while self._pending and len(taken) < self.max_items:
            item, future = self._pending.popleft()
            if not future.done():
                taken.append((item, future))
        return taken
