"""The ingress merges concurrent embedding requests into few handle calls (HandleEmbeddingClient over a fake Serve
handle): a lone request goes at once, the ones arriving meanwhile ride the next call, each gets its own result or
error, Serve's admission bound and each request's deadline still hold. Synchronised on events; every wait bounded."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from models.errors import ModelInputError
from serving.clients import EmbeddingResult
from serving.config import ModelConfig
from serving.deployments.common import ItemError
from serving.deployments.handle_clients import Deadlines, HandleEmbeddingClient, MergedCalls
from serving.deployments.merge import BatchMerger
from serving.errors import DeadlineExceededError, ModelUnavailableError, ServerOverloadedError

DEADLINE_S = 10  # any wait in these tests; only reached when the merging is broken
ROOMY = Deadlines(queue_s=DEADLINE_S, request_s=DEADLINE_S)


class GatedHandle:
    """A Serve handle (as the client uses it) whose `embed_many` calls are answered once `gate` is set: a request's
    inputs -> one vector per input holding its length, ["bad"] -> that request's own ItemError."""

    def __init__(self):
        self.calls: list[list] = []
        self.gate = asyncio.Event()
        self.sent = asyncio.Event()

    def options(self, **_):
        return self

    @property
    def embed_many(self):
        return self

    def remote(self, calls: list, model: str | None = None) -> "GatedAnswer":
        self.calls.append(calls)
        self.sent.set()
        return GatedAnswer(self, calls)

    async def wait_calls(self, n: int) -> None:
        while len(self.calls) < n:
            self.sent.clear()
            await asyncio.wait_for(self.sent.wait(), DEADLINE_S)


class GatedAnswer:
    def __init__(self, handle: GatedHandle, calls: list):
        self.handle, self.calls = handle, calls

    async def _fetch_future_result_async(self) -> None:
        await self.handle.gate.wait()

    def __await__(self):
        return self._answer().__await__()

    async def _answer(self) -> list:
        await self.handle.gate.wait()
        return [ItemError(ModelInputError("bad input", param="input")) if inputs == ["bad"]
                else EmbeddingResult(np.array([[len(x)] for x in inputs], dtype=np.float32), len(inputs))
                for inputs in self.calls]

    def cancel(self) -> None:
        pass


def started(client: HandleEmbeddingClient, inputs: list) -> asyncio.Future:
    return asyncio.ensure_future(client.embed(inputs))


async def until(predicate, deadline_s: float = DEADLINE_S) -> None:
    """Turns of the event loop until `predicate()` holds; AssertionError after `deadline_s`."""
    deadline = asyncio.get_running_loop().time() + deadline_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0)


async def test_requests_arriving_during_a_call_ride_the_next_one_and_get_their_own_vectors():
    handle = GatedHandle()
    client = HandleEmbeddingClient(handle, ROOMY, MergedCalls(held=100, in_flight=1))
    first = started(client, ["a"])
    await handle.wait_calls(1)  # a lone request is sent at once
    others = [started(client, [text]) for text in ("bb", "ccc", "dddd")]
    await until(lambda: client._merger.pending() == 3)  # all three wait behind the call in flight
    handle.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *others), DEADLINE_S)
    assert [r.vectors[0, 0] for r in results] == [1, 2, 3, 4]
    assert handle.calls == [[["a"]], [["bb"], ["ccc"], ["dddd"]]]


async def test_a_requests_own_error_fails_only_that_request():
    handle = GatedHandle()
    handle.gate.set()
    client = HandleEmbeddingClient(handle, ROOMY, MergedCalls(held=100, in_flight=1))
    good, bad = started(client, ["ok"]), started(client, ["bad"])
    assert (await asyncio.wait_for(good, DEADLINE_S)).vectors.tolist() == [[2.0]]
    with pytest.raises(ModelInputError, match="bad input"):
        await asyncio.wait_for(bad, DEADLINE_S)


async def test_requests_beyond_what_serve_admits_are_a_429_at_once_and_admitted_again_after():
    handle = GatedHandle()
    client = HandleEmbeddingClient(handle, ROOMY, MergedCalls(held=2, in_flight=1))
    held = [started(client, ["a"]), started(client, ["b"])]
    await handle.wait_calls(1)
    with pytest.raises(ServerOverloadedError, match="limit 2"):
        await client.embed(["c"])
    handle.gate.set()
    await asyncio.wait_for(asyncio.gather(*held), DEADLINE_S)
    assert (await asyncio.wait_for(client.embed(["d"]), DEADLINE_S)).prompt_tokens == 1


@pytest.mark.parametrize("deadlines, error", [
    (Deadlines(queue_s=DEADLINE_S, request_s=0.05), DeadlineExceededError),  # 504
    (Deadlines(queue_s=0.05, request_s=DEADLINE_S), ModelUnavailableError),  # 503, as a unary call not answered
])
async def test_requests_not_answered_within_their_deadlines_fail_whether_sent_or_still_waiting(deadlines, error):
    handle = GatedHandle()  # never answers
    client = HandleEmbeddingClient(handle, deadlines, MergedCalls(held=10, in_flight=1))
    sent = started(client, ["a"])
    await handle.wait_calls(1)
    waiting = started(client, ["b"])  # behind the call in flight
    for request in (sent, waiting):
        with pytest.raises(error):
            await asyncio.wait_for(request, DEADLINE_S)


def test_the_merging_follows_serves_bounds_of_the_model():
    model = ModelConfig(name="m", source="fake:", task="embedding", num_replicas=3, max_ongoing_requests=5)
    assert MergedCalls.of(model) == MergedCalls(held=5 * 3 + 5 * 3, in_flight=3, items=5)


async def test_an_awaited_run_may_have_max_runs_in_flight_and_the_rest_waits_for_a_free_one():
    gate, ran, calls = asyncio.Event(), asyncio.Event(), []

    async def run(items: list) -> list:
        calls.append(list(items))
        ran.set()
        await gate.wait()
        return [i * 10 for i in items]

    async def runs_started(n: int) -> None:
        while len(calls) < n:
            ran.clear()
            await asyncio.wait_for(ran.wait(), DEADLINE_S)

    merger = BatchMerger(run, max_items=8, max_runs=2)
    together = [asyncio.ensure_future(merger.submit(i)) for i in (1, 2)]
    await runs_started(1)
    third = asyncio.ensure_future(merger.submit(3))
    await runs_started(2)  # a second run while the first is in flight (with max_runs=1 this times out)
    fourth = asyncio.ensure_future(merger.submit(4))
    await until(lambda: merger.pending() == 1)
    assert merger.running() == 2 and calls == [[1, 2], [3]]  # the fourth waits: no third run was started
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(*together, third, fourth), DEADLINE_S) == [10, 20, 30, 40]
    assert calls == [[1, 2], [3], [4]]
