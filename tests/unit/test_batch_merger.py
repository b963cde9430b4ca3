"""BatchMerger: one run at a time; batches that arrive during a run are merged into the next, results split back."""
import asyncio
import threading

import pytest

from serving.deployments.merge import BatchMerger


class GatedRun:
    """run(items) -> [item * 10]; blocks until released, so the test decides when a run ends."""

    def __init__(self):
        self.calls: list[list] = []
        self.gate = threading.Event()

    def __call__(self, items):
        self.calls.append(list(items))
        self.gate.wait(5)
        if "boom" in items:
            raise ValueError("boom")
        return [item * 10 for item in items]


async def until(predicate):
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("timed out")


async def test_batches_that_wait_during_a_run_are_merged_into_the_next_run():
    run = GatedRun()
    merger = BatchMerger(run, max_items=8)
    first = asyncio.ensure_future(merger([1]))
    await until(lambda: len(run.calls) == 1)
    waiting = [asyncio.ensure_future(merger(batch)) for batch in ([2, 3], [4], [5, 6, 7])]
    await asyncio.sleep(0.01)
    run.gate.set()
    assert await first == [10]
    assert [await w for w in waiting] == [[20, 30], [40], [50, 60, 70]]
    assert run.calls == [[1], [2, 3, 4, 5, 6, 7]]


async def test_a_merged_run_stops_at_max_items_whole_batches_only():
    run = GatedRun()
    merger = BatchMerger(run, max_items=3)
    first = asyncio.ensure_future(merger(["a"]))
    await until(lambda: len(run.calls) == 1)
    rest = [asyncio.ensure_future(merger(batch)) for batch in (["b", "c"], ["d", "e"], ["f", "g", "h", "i"])]
    await asyncio.sleep(0.01)
    run.gate.set()
    await asyncio.gather(first, *rest)
    assert run.calls == [["a"], ["b", "c"], ["d", "e"], ["f", "g", "h", "i"]]  # one batch alone may exceed it


async def test_an_error_fails_every_batch_of_its_run_and_the_next_run_still_works():
    run = GatedRun()
    merger = BatchMerger(run, max_items=8)
    first = asyncio.ensure_future(merger([1]))
    await until(lambda: len(run.calls) == 1)
    doomed = [asyncio.ensure_future(merger(batch)) for batch in ([2], ["boom"])]
    await asyncio.sleep(0.01)
    run.gate.set()
    assert await first == [10]
    for d in doomed:
        with pytest.raises(ValueError, match="boom"):
            await d
    assert await merger([3]) == [30]


async def test_a_run_that_returns_the_wrong_number_of_results_is_an_error():
    merger = BatchMerger(lambda items: items[:-1], max_items=8)
    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        await merger([1, 2])


async def test_a_lone_request_never_waits_but_after_a_group_the_next_pass_waits_for_companions():
    run = GatedRun()
    run.gate.set()
    merger = BatchMerger(run, max_items=4, wait_s=0.3)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await merger([1]) == [10] and await merger([2]) == [20]  # passes of one: no wait before either
    assert loop.time() - start < 0.2
    assert await merger([3, 4]) == [30, 40]  # a pass of several: the next pass waits for more
    lone = asyncio.ensure_future(merger([5]))
    await asyncio.sleep(0.05)
    companion = asyncio.ensure_future(merger([6]))
    assert (await lone, await companion) == ([50], [60])
    assert run.calls[-1] == [5, 6]  # gathered into one pass
    start = loop.time()
    full = await asyncio.gather(merger([7, 8]), merger([9, 10]))  # max_items reached: no need to wait
    assert full == [[70, 80], [90, 100]] and loop.time() - start < 0.2
