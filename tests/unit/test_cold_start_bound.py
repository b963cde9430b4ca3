"""The ingress' bound on a call waiting for a replica (a cold start from zero): 503 + Retry-After past it."""
import asyncio

import pytest

from serving.config import ModelConfig
from serving.deployments.handle_clients import HandleEmbeddingClient, assigned
from serving.errors import ModelUnavailableError


class FakeResponse:
    """A DeploymentResponse whose assignment to a replica comes when `assign()` is called (or never)."""

    def __init__(self, result=None):
        self.assignment = asyncio.get_running_loop().create_future()
        self.result = result
        self.cancelled = False

    def assign(self):
        self.assignment.set_result("replica")

    async def _fetch_future_result_async(self):
        return await self.assignment

    def cancel(self):
        self.cancelled = True
        self.assignment.cancel()

    def __await__(self):
        return self._resolve().__await__()

    async def _resolve(self):
        await self.assignment
        return self.result


class FakeHandle:
    def __init__(self, response):
        self.response = response

    def options(self, **_):
        return self

    def __getattr__(self, _method):
        return self

    def remote(self, *_args):
        return self.response


async def test_no_replica_within_the_bound_is_a_503_with_retry_after_and_the_call_is_cancelled():
    response = FakeResponse()
    with pytest.raises(ModelUnavailableError) as e:
        await assigned(response, 0.05)
    assert response.cancelled and e.value.status_code == 503 and e.value.code == "model_starting"
    assert e.value.headers() == {"Retry-After": "5"} and "within 0.05 s" in e.value.message


async def test_a_replica_in_time_answers():
    response = FakeResponse(result="vectors")
    client = HandleEmbeddingClient(FakeHandle(response), assign_timeout_s=5)
    call = asyncio.get_running_loop().create_task(client.embed(["x"]))
    response.assign()
    assert await asyncio.wait_for(call, 5) == "vectors" and not response.cancelled


async def test_no_bound_waits_as_serve_does():
    response = FakeResponse()
    waiting = asyncio.get_running_loop().create_task(assigned(response, None))
    await asyncio.wait_for(waiting, 5)  # returns at once: nothing is awaited without a bound here
    assert not response.cancelled


def test_only_a_model_that_scales_to_zero_is_bounded():
    base = {"name": "m", "task": "embedding", "source": "fake:"}
    assert ModelConfig.model_validate(base).cold_start_timeout_s is None
    one = {**base, "autoscaling": {"min_replicas": 1, "max_replicas": 2}}
    assert ModelConfig.model_validate(one).cold_start_timeout_s is None
    zero = {**base, "autoscaling": {"min_replicas": 0, "max_replicas": 2, "cold_start_timeout_s": 20}}
    assert ModelConfig.model_validate(zero).cold_start_timeout_s == 20
