"""Bounds at the Ray boundary without a Ray cluster: each model's Serve limits, the deadlines of handle calls (on
fakes of Serve's response objects), Ray's failures as typed errors, and the secrets file."""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import stat

import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError, RequestCancelledError
from ray.serve.handle import DeploymentResponse

from serving.api.errors import error_headers, error_payload
from serving.config import ModelConfig, ServerConfig
from serving.deployments import serve_ops
from serving.deployments.handle_clients import Deadlines, call_within, stream_within, unwrap
from serving.errors import DeadlineExceededError, ModelUnavailableError, ServerOverloadedError
from serving.secrets import SECRET_FIELDS, read_server, write_secrets


def model(**fields) -> ModelConfig:
    return ModelConfig(name="m", **{"source": "fake:", "task": "embedding", **fields})


# --- each model's Serve limits ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, ongoing, queued", [
    ({}, 64, 64),
    ({"task": "chat"}, 16 + 256, 16 + 256),  # Serve lets in what the engine accepts (its defaults)
    ({"task": "chat", "source": "hf:org/llama"}, 16 + 256, 16 + 256),  # a real engine's defaults too
    ({"task": "chat", "options": {"max_running": 4, "max_queued": 2}}, 6, 6),
    ({"task": "chat", "max_ongoing_requests": 3}, 3, 3),
    ({"num_replicas": 3, "max_ongoing_requests": 5}, 5, 15),
    ({"autoscaling": {"min_replicas": 0, "max_replicas": 4}}, 64, 256),
    ({"max_queued_requests": 7}, 64, 7),
])
def test_serve_limits_derive_from_the_models_capacity(fields, ongoing, queued):
    spec = model(**fields)
    assert (serve_ops.max_ongoing_requests(spec), serve_ops.max_queued_requests(spec)) == (ongoing, queued)


def test_the_model_deployment_carries_both_limits():
    options = serve_ops.deployment_options(model(max_queued_requests=9))
    assert (options["max_ongoing_requests"], options["max_queued_requests"]) == (64, 9)
    deployment = serve_ops.DEPLOYMENTS["embedding"].options(**options)  # what Serve is given
    assert (deployment.max_ongoing_requests, deployment.max_queued_requests) == (64, 9)


def test_a_model_at_zero_waits_for_a_replica_up_to_its_cold_start_bound():
    server = ServerConfig(queue_timeout_s=30, request_timeout_s=600)
    at_zero = {"autoscaling": {"min_replicas": 0, "max_replicas": 2, "cold_start_timeout_s": 120}}
    assert Deadlines.of(model(**at_zero), server) == Deadlines(120, 600)
    assert Deadlines.of(model(**at_zero, queue_timeout_s=5), server) == Deadlines(5, 600)  # its own deadline wins
    assert Deadlines.of(model(autoscaling={"min_replicas": 1, "max_replicas": 2}), server) == Deadlines(30, 600)


def test_deadlines_are_the_models_own_else_the_servers():
    server = ServerConfig(queue_timeout_s=30, request_timeout_s=300)
    assert Deadlines.of(model(), server) == Deadlines(30, 300)
    assert Deadlines.of(model(queue_timeout_s=2, request_timeout_s=5), server) == Deadlines(2, 5)


# --- Ray's failures as typed errors ------------------------------------------------------------------------------

def test_serves_queue_bound_is_a_429_with_retry_after():
    error = unwrap(BackPressureError(num_queued_requests=8, max_queued_requests=8))
    assert isinstance(error, ServerOverloadedError)
    assert "(8 requests waiting, limit 8)" in error.message
    status, body = error_payload(error)
    assert (status, body["error"]["type"], error_headers(error)) == (429, "rate_limit_error", {"Retry-After": "1"})


def test_a_dead_replica_is_a_503():
    assert isinstance(unwrap(ActorDiedError()), ModelUnavailableError)


# --- deadlines of handle calls -----------------------------------------------------------------------------------

async def first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in pending:
        waiter.cancel()


class FakeResponse:
    """Serve's DeploymentResponse as call_within uses it: taken by a replica when `taken` is set, answered when
    `answered` is; like Serve's, `cancel()` makes a pending await raise RequestCancelledError."""

    def __init__(self, result="done", error: BaseException | None = None):
        self.taken, self.answered, self.cancelled = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.awaited = asyncio.Event()  # someone waits for the answer
        self.result, self.error = result, error

    async def _fetch_future_result_async(self):
        if self.error is not None:
            raise self.error
        await self.taken.wait()

    def __await__(self):
        return self._answer().__await__()

    async def _answer(self):
        self.awaited.set()
        await first_of(self.answered, self.cancelled)
        if self.cancelled.is_set():
            raise RequestCancelledError("r")
        return self.result

    def cancel(self):
        self.cancelled.set()


def test_ray_still_has_the_stage_call_within_waits_on():
    assert inspect.iscoroutinefunction(DeploymentResponse._fetch_future_result_async)


async def test_a_call_answered_in_time_returns_its_result():
    response = FakeResponse()
    response.taken.set()
    response.answered.set()
    assert await call_within(response, Deadlines(1, 1)) == "done"
    assert not response.cancelled.is_set()


async def test_a_call_no_replica_takes_is_cancelled_and_a_503_at_the_queue_deadline():
    response = FakeResponse()
    with pytest.raises(ModelUnavailableError, match="did not answer within 0.05 s") as e:
        await call_within(response, Deadlines(0.05, 10))
    assert response.cancelled.is_set() and e.value.headers() == {"Retry-After": "5"}


async def test_a_request_deadline_before_the_queue_deadline_is_a_504_even_for_a_call_not_yet_taken():
    response = FakeResponse()
    with pytest.raises(DeadlineExceededError):
        await call_within(response, Deadlines(10, 0.05))
    assert response.cancelled.is_set()


async def test_a_call_taken_but_not_answered_is_cancelled_and_a_504_at_the_request_deadline():
    response = FakeResponse()
    response.taken.set()
    with pytest.raises(DeadlineExceededError, match="longer than 0.05 s"):
        await call_within(response, Deadlines(10, 0.05))
    assert response.cancelled.is_set()


async def test_a_caller_leaving_a_call_cancels_it():
    response = FakeResponse()
    response.taken.set()
    waiting = asyncio.ensure_future(call_within(response, Deadlines(10, 10)))
    await asyncio.wait_for(response.awaited.wait(), 5)  # the call is running on its replica
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert response.cancelled.is_set()


async def test_a_full_queue_is_a_429_at_once():
    response = FakeResponse(error=BackPressureError(num_queued_requests=1, max_queued_requests=1))
    with pytest.raises(ServerOverloadedError):
        await call_within(response, Deadlines(10, 10))


class FakeStream:
    """Serve's DeploymentResponseGenerator: yields what is put in `items` (None ends it, an exception is raised);
    like Serve's, `cancel()` makes a pending __anext__ raise RequestCancelledError, and re-raises the error of a
    call that never reached a replica."""

    def __init__(self):
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancelled = asyncio.Event()
        self.error: BaseException | None = None

    async def __anext__(self):
        item = await self.items.get()
        if self.cancelled.is_set():
            raise RequestCancelledError("r")
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.error = item
            raise item
        return item

    def cancel(self):
        self.cancelled.set()
        self.items.put_nowait("wakes a pending __anext__")
        if self.error is not None:
            raise self.error


async def test_a_stream_in_time_yields_every_item_then_cancels_its_call():
    stream = FakeStream()
    for item in ("a", "b", None):
        stream.items.put_nowait(item)
    assert [item async for item in stream_within(stream, Deadlines(1, 1))] == ["a", "b"]
    assert stream.cancelled.is_set()


async def test_a_stream_without_a_first_item_is_a_503_at_the_queue_deadline():
    stream = FakeStream()
    with pytest.raises(ModelUnavailableError):
        async for _ in stream_within(stream, Deadlines(0.05, 10)):
            pass
    assert stream.cancelled.is_set()


async def test_a_stream_still_running_at_the_request_deadline_is_a_504_after_its_items():
    stream = FakeStream()
    stream.items.put_nowait("a")
    seen = []
    with pytest.raises(DeadlineExceededError):
        async for item in stream_within(stream, Deadlines(10, 0.1)):
            seen.append(item)
    assert seen == ["a"] and stream.cancelled.is_set()


async def test_a_stream_refused_by_serves_queue_bound_is_a_429():
    stream = FakeStream()
    stream.items.put_nowait(BackPressureError(num_queued_requests=4, max_queued_requests=4))
    with pytest.raises(ServerOverloadedError):
        async for _ in stream_within(stream, Deadlines(10, 10)):
            pass


async def test_a_caller_leaving_a_stream_cancels_its_call():
    stream = FakeStream()
    stream.items.put_nowait("a")
    items = stream_within(stream, Deadlines(10, 10))
    assert await anext(items) == "a"
    await items.aclose()
    assert stream.cancelled.is_set()


# --- secrets ------------------------------------------------------------------------------------------------------

def test_secrets_travel_in_a_private_file_not_in_the_settings(tmp_path):
    server = ServerConfig(data_dir=str(tmp_path), api_keys=["sk-1"], admin_api_keys=["adm"],
                          registry_url="postgresql+psycopg://u:password@db/x")
    settings, path = write_secrets(server)
    assert not SECRET_FIELDS & settings.keys() and "password" not in json.dumps(settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_server(settings, path) == server
