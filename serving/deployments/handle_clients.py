"""serving.clients protocols over Ray Serve deployment handles: every call bounded, every Ray failure typed.

Bounds (docs/serving-path.md): Serve holds at most the model's `max_queued_requests` calls waiting for a replica and
refuses the next at once (BackPressureError: 429). A call the model has not started answering within the queue
deadline (a stream: no first chunk; a unary call: no result, since Serve's direct calls hear that a replica took them
only with its answer) is cancelled and answered 503; one not finished within the request deadline of its start
(streams too) is cancelled and answered 504.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator

import anyio
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from models.errors import EngineOverloadedError, ModelInputError
from models.images.types import ImageParams
from models.speech.types import SpeechParams
from serving.clients import EmbeddingResult, EncodedAudio, GenerationChunk, GenerationRequest
from serving.config import ModelConfig, ServerConfig
from serving.deployments.common import item_result
from serving.deployments.merge import BatchMerger
from serving.deployments.serve_ops import max_ongoing_requests, max_queued_requests
from serving.errors import (
    DeadlineExceededError, ModelNotFoundError, ModelUnavailableError, ServerOverloadedError, ServingError,
)

TYPED_ERRORS = (ServingError, ModelInputError, EngineOverloadedError)  # what serving.api.errors maps to HTTP


@dataclass(frozen=True)
class Deadlines:
    """Seconds until the model must start answering a call (a replica takes it, a stream's first chunk), and
    seconds the call may take in all."""

    queue_s: float
    request_s: float

    @classmethod
    def of(cls, model: ModelConfig, server: ServerConfig) -> Deadlines:
        """The model's own deadlines where it sets them, else the server's; a model that scales to zero waits for a
        replica up to its cold-start bound (autoscaling.cold_start_timeout_s) unless it sets its own queue deadline."""
        queue_s = model.queue_timeout_s or model.cold_start_timeout_s or server.queue_timeout_s
        return cls(queue_s, model.request_timeout_s or server.request_timeout_s)

    @property
    def start_s(self) -> float:
        """How long the first stage may take: the queue deadline, or the request deadline when that comes first."""
        return min(self.queue_s, self.request_s)

    def start_timeout(self) -> ServingError:
        """The error for a call not started within start_s: 503, or 504 when the request deadline is what passed."""
        return self.request_timeout() if self.request_s <= self.queue_s else self.queue_timeout()

    def queue_timeout(self) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"The model did not answer within {self.queue_s:g} s (it is starting, busy, or has no replica that can "
            "be placed); retry later.", code="queue_timeout",
        )

    def request_timeout(self) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"The request took longer than {self.request_s:g} s and was cancelled.", code="request_timeout"
        )


def direct(handle):
    """The handle with calls sent straight to the replica's gRPC server, arguments and results by value, instead of
    as Ray tasks whose results go through the object store (`_by_reference=False`, in DeploymentHandle.options'
    documented signature): fewer hops per call (figures in docs/serving-path.md)."""
    return handle.options(_by_reference=False)


def unwrap(error: BaseException) -> BaseException:
    """Ray's failures and a replica's wrapped exception (RayTaskError with .cause) as the typed errors the HTTP layer
    maps (serving.api.errors): Serve's full queue is a 429, a model undeployed meanwhile a 404, a replica that died a
    503, a replica's own error as it was raised. The only unwrapping of Ray's errors."""
    if isinstance(error, BackPressureError):
        waiting, limit = error.args[:2]  # Serve keeps its constructor's arguments in args (for pickling)
        return ServerOverloadedError(
            f"The model's queue is full ({waiting} requests waiting, limit {limit}); retry later."
        )
    if isinstance(error, DeploymentUnavailableError):  # the model was undeployed between lookup and call
        return ModelNotFoundError("The model is no longer deployed.")
    if isinstance(error, (RayActorError, ReplicaUnavailableError)):
        return ModelUnavailableError("The model's replica stopped while answering; retry later.")
    cause = getattr(error, "cause", None)
    if isinstance(cause, TYPED_ERRORS):
        return cause
    return error


def cancel(response) -> None:
    """Stop a handle call's work, whatever stage it is at; one that never reached a replica has no work to stop
    (Serve's cancel() re-raises the error that kept it from a replica, e.g. BackPressureError: not ours to raise)."""
    try:
        response.cancel()
    except Exception:  # noqa: BLE001 - the call already failed, and its caller has that error
        pass


class _Watchdog:
    """Cancels a handle call still running at its request deadline: one timer per call rather than a cancel scope
    around every item of a stream (each costs several times a timer)."""

    def __init__(self):
        self.expired = False
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, response, seconds: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(max(seconds, 0.0), self._expire, response)

    def _expire(self, response) -> None:
        self.expired = True
        cancel(response)  # the caller's pending await then raises (Serve's RequestCancelledError)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def error(self, failure: Exception, deadlines: Deadlines) -> Exception:
        """What the watched call's failure means: the request deadline when this cancelled it, else typed."""
        if isinstance(failure, ServingError):
            return failure
        return deadlines.request_timeout() if self.expired else unwrap(failure)


async def _taken_within(response, seconds: float) -> bool:
    """Whether a replica took the call within `seconds` (Ray has no public name for this stage of a call; over
    the direct path it ends with the answer of a unary call, with the first item of a stream)."""
    with anyio.move_on_after(seconds):
        await response._fetch_future_result_async()
        return True
    return False


async def call_within(response, deadlines: Deadlines) -> Any:
    """The result of a unary handle call (a DeploymentResponse) within `deadlines`; past either it is cancelled."""
    start = asyncio.get_running_loop().time()
    watchdog = _Watchdog()
    try:
        if not await _taken_within(response, deadlines.start_s):
            cancel(response)
            raise deadlines.start_timeout()
        watchdog.arm(response, deadlines.request_s - (asyncio.get_running_loop().time() - start))
        return await response
    except asyncio.CancelledError:  # the caller left: the replica stops the work
        cancel(response)
        raise
    except Exception as e:
        raise watchdog.error(e, deadlines) from None
    finally:
        watchdog.stop()


_TIMED_OUT = object()


async def _next_within(stream, seconds: float) -> Any:
    """The stream's next item, or _TIMED_OUT after `seconds`; StopAsyncIteration at its end."""
    with anyio.move_on_after(seconds):
        return await stream.__anext__()
    return _TIMED_OUT


async def stream_within(stream, deadlines: Deadlines) -> AsyncIterator[Any]:
    """The items of a streaming handle call (a DeploymentResponseGenerator): the first within the queue deadline,
    the last within the request deadline; the call is cancelled however the iteration ends."""
    start = asyncio.get_running_loop().time()
    watchdog = _Watchdog()
    try:
        item = await _next_within(stream, deadlines.start_s)
        if item is _TIMED_OUT:
            raise deadlines.start_timeout()
        watchdog.arm(stream, deadlines.request_s - (asyncio.get_running_loop().time() - start))
        while True:
            yield item
            item = await stream.__anext__()
    except StopAsyncIteration:
        if watchdog.expired:
            raise deadlines.request_timeout() from None
    except Exception as e:
        raise watchdog.error(e, deadlines) from None
    finally:
        watchdog.stop()
        cancel(stream)  # done, failed, timed out or the caller left: the replica stops the work


class HandleChatClient:
    def __init__(self, handle, deadlines: Deadlines):
        self._unary = direct(handle)
        self._handle = self._unary.options(stream=True)
        self._deadlines = deadlines
        self._unary = direct(handle)

    async def engine_stats(self) -> dict | None:
        """One replica's engine stats (ChatDeployment.engine_stats): its path, load and counters; within the
        request deadlines like any call."""
        return await call_within(self._unary.engine_stats.remote(), self._deadlines)

    async def tokenize(self, request: GenerationRequest, special: bool) -> list[int]:
        return await call_within(self._unary.tokenize.remote(request, special), self._deadlines)

    async def detokenize(self, token_ids: list[int]) -> str:
        return await call_within(self._unary.detokenize.remote(token_ids), self._deadlines)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """The replica streams lists of chunks (several deltas per Ray item under load); flatten them."""
        items = stream_within(self._handle.generate.remote(request), self._deadlines)
        try:
            async for chunks in items:
                for chunk in chunks:
                    yield chunk
        finally:
            await items.aclose()


@dataclass(frozen=True)
class MergedCalls:
    """How the ingress sends one model's unary calls: at most `held` requests at once (what Serve admits: the
    replicas' places and its queue; beyond them a 429, as Serve answers), merged into at most `in_flight` handle
    calls of at most `items` requests each."""

    held: int
    in_flight: int = 1
    items: int = 64

    @classmethod
    def of(cls, model: ModelConfig) -> MergedCalls:
        """One call per replica at a time, each at most what one replica holds: with a second in flight the replica
        split 64 waiting requests into smaller passes (benchmarks.md, "Small requests")."""
        replicas = max(1, model.autoscaling.max_replicas if model.autoscaling else model.num_replicas)
        ongoing = max_ongoing_requests(model)
        return cls(held=ongoing * replicas + max_queued_requests(model), in_flight=replicas, items=ongoing)


class HandleEmbeddingClient:
    """Concurrent requests go to the replica as one handle call (a Ray call costs more CPU than encoding a short
    sentence; docs/architecture.md): a BatchMerger sends what waits whenever fewer than `in_flight` calls run, a
    lone request at once. The replica answers each request on its own (`EmbeddingModel.embed_many`)."""

    def __init__(self, handle, deadlines: Deadlines, merged: MergedCalls | None = None, model: str | None = None):
        self._handle = direct(handle)
        self._deadlines = deadlines
        self._model = model  # sent with every call: a colocation group's replica serves several models
        self._merged = merged or MergedCalls(held=2**31)
        self._merger = BatchMerger(self._call, self._merged.items, max_runs=self._merged.in_flight)
        self._held = 0

    async def embed(self, inputs: list[str] | list[list[int]]) -> EmbeddingResult:
        if self._held >= self._merged.held:
            raise ServerOverloadedError(
                f"The model's queue is full ({self._held} requests held, limit {self._merged.held}); retry later."
            )
        self._held += 1
        try:
            # Its own deadline, whichever call it rides: as for any unary call, answered within the queue deadline.
            with anyio.fail_after(self._deadlines.start_s):
                return item_result(await self._merger.submit(inputs))
        except TimeoutError:
            raise self._deadlines.start_timeout() from None
        finally:
            self._held -= 1

    async def _call(self, calls: list) -> list:
        return await call_within(self._handle.embed_many.remote(calls, model=self._model), self._deadlines)


class HandleImageClient:
    def __init__(self, handle, deadlines: Deadlines, model: str | None = None):
        self._handle = direct(handle)
        self._deadlines = deadlines
        self._model = model  # sent with every call: a colocation group's replica serves several models

    async def generate(self, prompt: str, params: ImageParams, n: int) -> list[bytes]:
        return await call_within(self._handle.generate.remote(prompt, params, n, model=self._model), self._deadlines)


class HandleSpeechClient:
    def __init__(self, handle, deadlines: Deadlines, model: str | None = None):
        self._handle = direct(handle)
        self._deadlines = deadlines
        self._model = model  # sent with every call: a colocation group's replica serves several models

    async def synthesize(self, text: str, params: SpeechParams, response_format: str) -> EncodedAudio:
        response = self._handle.synthesize.remote(text, params, response_format, model=self._model)
        return await call_within(response, self._deadlines)


HANDLE_CLIENTS = {
    "chat": HandleChatClient,
    "embedding": HandleEmbeddingClient,
    "image": HandleImageClient,
    "speech": HandleSpeechClient,
}
