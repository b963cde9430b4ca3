"""BatchMerger: one run at a time; calls that arrive during a run go into the next, results split back; callers
that left are dropped. Synchronised on events (no sleeps); every wait has a deadline."""
import asyncio
import threading

import pytest

from serving.deployments.merge import BatchMerger

DEADLINE_S = 10  # any wait in these tests; only reached when the merger is broken
FOREVER_S = 3600  # a batch wait no test may sit through: finishing in time proves the merger did not wait


class GatedRun:
    """run(items) -> [item * 10]; blocks until `gate` is set, so the test decides when a run ends."""

    def __init__(self, open_: bool = False):
        self.calls: list[list] = []
        self.gate = threading.Event()
        if open_:
            self.gate.set()
        self._changed = threading.Condition()

    def __call__(self, items):
        with self._changed:
            self.calls.append(list(items))
            self._changed.notify_all()
        assert self.gate.wait(DEADLINE_S), "the test never opened the gate"
        if "boom" in items:
            raise ValueError("boom")
        return [item * 10 for item in items]

    async def started(self, runs: int) -> None:
        """Until `runs` runs have started (in the worker thread)."""
        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: len(self.calls) >= runs, DEADLINE_S)

        assert await asyncio.to_thread(wait), f"{runs} runs never started: {self.calls}"


def within_deadline(awaitable):
    return asyncio.wait_for(awaitable, DEADLINE_S)


async def test_calls_that_arrive_during_a_run_go_into_the_next_run():
    run = GatedRun()
    merger = BatchMerger(run, max_items=8)
    first = asyncio.ensure_future(merger.submit(1))
    await run.started(1)
    waiting = [asyncio.ensure_future(merger.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)  # let the submits enqueue (one turn of the loop, not a wait for time)
    run.gate.set()
    assert await within_deadline(first) == 10
    assert await within_deadline(asyncio.gather(*waiting)) == [20, 30, 40]
    assert run.calls == [[1], [2, 3, 4]]


async def test_a_run_takes_at_most_max_items_in_arrival_order():
    run = GatedRun()
    merger = BatchMerger(run, max_items=3)
    first = asyncio.ensure_future(merger.submit("a"))
    await run.started(1)
    rest = [asyncio.ensure_future(merger.submit(x)) for x in "bcdefg"]
    await asyncio.sleep(0)
    run.gate.set()
    await within_deadline(asyncio.gather(first, *rest))
    assert run.calls == [["a"], ["b", "c", "d"], ["e", "f", "g"]]


async def test_an_error_fails_every_caller_of_its_run_and_the_next_run_still_works():
    run = GatedRun()
    merger = BatchMerger(run, max_items=8)
    first = asyncio.ensure_future(merger.submit(1))
    await run.started(1)
    doomed = [asyncio.ensure_future(merger.submit(x)) for x in (2, "boom")]
    await asyncio.sleep(0)
    run.gate.set()
    assert await within_deadline(first) == 10
    for d in doomed:
        with pytest.raises(ValueError, match="boom"):
            await within_deadline(d)
    assert await within_deadline(merger.submit(3)) == 30


async def test_a_run_that_returns_the_wrong_number_of_results_is_an_error_for_each_caller():
    merger = BatchMerger(lambda items: items[:-1], max_items=8)
    results = await within_deadline(asyncio.gather(merger.submit(1), merger.submit(2), return_exceptions=True))
    assert [str(r) for r in results] == ["batch function returned 1 results for 2 items"] * 2


async def test_a_caller_that_left_before_its_run_is_not_computed():
    run = GatedRun()
    merger = BatchMerger(run, max_items=8)
    first = asyncio.ensure_future(merger.submit(1))
    await run.started(1)
    gone, stays = asyncio.ensure_future(merger.submit(2)), asyncio.ensure_future(merger.submit(3))
    await asyncio.sleep(0)
    gone.cancel()  # what Serve does to the replica's call when the client hung up
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert merger.pending() == 1
    run.gate.set()
    assert (await within_deadline(first), await within_deadline(stays)) == (10, 30)
    assert run.calls == [[1], [3]]


async def test_a_caller_that_leaves_during_its_run_does_not_disturb_the_others():
    run = GatedRun()
    merger = BatchMerger(run, max_items=8)
    gone, stays = asyncio.ensure_future(merger.submit(1)), asyncio.ensure_future(merger.submit(2))
    await run.started(1)
    gone.cancel()
    run.gate.set()
    assert await within_deadline(stays) == 20
    assert gone.cancelled() and run.calls == [[1, 2]]


async def test_a_lone_request_never_waits_but_after_a_group_the_next_pass_waits_for_companions():
    run = GatedRun(open_=True)
    merger = BatchMerger(run, max_items=2, wait_s=FOREVER_S)
    assert await within_deadline(merger.submit(1)) == 10  # passes of one: no wait before either
    assert await within_deadline(merger.submit(2)) == 20
    run.gate.clear()
    group = asyncio.ensure_future(asyncio.gather(merger.submit(3), merger.submit(4)))
    await run.started(3)
    lone = asyncio.ensure_future(merger.submit(5))
    await asyncio.sleep(0)
    run.gate.set()
    # When the group's results are out, the merger has already chosen to wait rather than run 5 alone.
    assert await within_deadline(group) == [30, 40]
    assert run.calls[-1] == [3, 4] and merger.pending() == 1
    companion = asyncio.ensure_future(merger.submit(6))  # max_items reached: the pass runs at once
    assert (await within_deadline(lone), await within_deadline(companion)) == (50, 60)
    assert run.calls[-1] == [5, 6]
