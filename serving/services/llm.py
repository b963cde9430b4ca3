"""LLMService: drives an engine from one background thread and streams each request's deltas to asyncio callers.

Caller side (the replica's event loop): admission (429 past `max_pending`), the prompt's token ids (PromptEncoder:
its own thread, a character cap first) and the length checks, all before the request reaches the engine thread;
then one asyncio.Queue per call receives the deltas through `loop.call_soon_threadsafe`.

Engine thread: the only one that touches the engine (an EngineClient). When the engine dies (its process exits,
hangs, or its steps keep failing) every request in flight and every new one gets ModelUnavailableError (503 with
Retry-After) while the engine restarts with backoff (RestartPolicy); the service reports unhealthy only when
restarting cannot help, so that Serve replaces the replica.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import AsyncIterator, Callable, Iterator

from models.errors import EngineOverloadedError, ModelInputError
from models.llm.types import RequestOutput
from models.llm.validation import validate_request
from serving.clients import GenerationChunk, GenerationRequest
from serving.errors import (InvalidRequestError, ModelExecutionError, ModelUnavailableError, ServerOverloadedError,
                            ServingError)
from serving.services.engine_messages import (AddRequest, EngineClient, EngineDeadError, EngineInfo,
                                              RequestFailed, StepOutputs)
from serving.services.prompts import MAX_CHARS_PER_TOKEN, PromptEncoder

log = logging.getLogger(__name__)

IDLE_CHECK_S = 0.5  # an idle engine thread looks this often whether the engine is still there


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart an engine that died, and when to give up (the replica then reports unhealthy)."""

    max_failures: int = 5  # deaths or failed starts in a row (within `stable_after_s` of a start); 1: never restart
    first_delay_s: float = 0.0  # the first restart is immediate: a killed engine has no reason to wait
    max_delay_s: float = 16.0  # later ones wait 1, 2, 4 ... seconds, up to this
    stable_after_s: float = 60.0  # an engine that ran this long starts a new count

    def delay_s(self, failures: int) -> float:
        """The wait before the restart that follows the `failures`-th failure in a row (1-based)."""
        return self.first_delay_s if failures <= 1 else min(self.max_delay_s, 2.0 ** (failures - 2))


@dataclass
class _Stream:
    """Where one engine request's outputs go: the caller's loop and queue, and its choice index."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    index: int


@dataclass(frozen=True)
class _Add:
    request: GenerationRequest
    prompt_token_ids: list[int]
    streams: dict[str, _Stream]


@dataclass(frozen=True)
class _Abort:
    request_ids: list[str]


class LLMService:
    """Implements serving.clients.ChatClient over the engine that `start_engine()` returns (called again to restart
    it). `max_pending` bounds queued + running requests; by default the engine's own bound, max_running +
    max_queued, so a request the engine would refuse is answered 429 at once, on the caller's side."""

    def __init__(self, start_engine: Callable[[], EngineClient], max_pending: int | None = None,
                 restarts: RestartPolicy = RestartPolicy()):
        self._start_engine = start_engine
        self.restarts = restarts
        self.engine = self._start()
        info: EngineInfo = self.engine.info
        self.max_model_len = info.max_model_len
        self.max_pending = info.max_running + info.max_queued if max_pending is None else max_pending
        self._prompts = PromptEncoder(info.tokenizer, max_chars=MAX_CHARS_PER_TOKEN * info.max_model_len)
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}  # engine request id -> stream; touched on the engine thread only
        self._pending = 0  # engine requests accepted and not finished; guarded by _lock
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._available = threading.Event()  # clear while the engine restarts: callers get a 503 at once
        self._available.set()
        self._failures = 0  # engine deaths in a row (see RestartPolicy)
        self._retry_after_s = self._start_s
        self.error: BaseException | None = None  # set when restarting cannot help; health checks read it
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    def engine_stats(self) -> dict | None:
        """The engine's last stats report as a dict (models.llm.types.EngineStats), None before its first; never
        a call into the engine."""
        stats = self.engine.stats
        if stats is None:
            return None
        return dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else dict(vars(stats))

    def check_health(self) -> None:
        """Raise when this service cannot recover by itself (its engine thread ended or restarts keep failing)."""
        if self.error is not None or not self._thread.is_alive():
            raise RuntimeError(f"the LLM engine cannot be restarted: {self.error!r}")

    def shutdown(self) -> None:
        self._stop.set()
        self._wakeup.set()
        self._thread.join(timeout=10)
        self.engine.close()
        self._prompts.close()

    async def tokenize(self, request: GenerationRequest, special: bool) -> list[int]:
        """The prompt's token ids, as the engine would get them (PromptEncoder.tokenize)."""
        return await self._prompts.tokenize(request, special)

    async def detokenize(self, token_ids: list[int]) -> str:
        return await self._prompts.detokenize(token_ids)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream chunks of all n choices; on exit (done, error or cancelled) abort what is still running."""
        async for chunks in self.generate_batches(request):
            for chunk in chunks:
                yield chunk

    async def generate_batches(self, request: GenerationRequest) -> AsyncIterator[list[GenerationChunk]]:
        """Like `generate`, but yields every chunk already available at once, as a list (never empty).

        Under load, when the consumer falls behind the engine, several deltas travel as one item: fewer Ray stream
        items (each has a fixed cost) exactly when that cost matters. Nothing is held back to wait for more.
        """
        self._check_available()
        ids = [f"{request.request_id}-{i}" for i in range(request.n)]
        self._reserve(len(ids))
        try:
            prompt_ids = await self._prompts.encode(request)
            self._check_fits(prompt_ids, request)
        except BaseException:
            self._release(len(ids))
            raise
        loop = asyncio.get_running_loop()
        out_queue: asyncio.Queue = asyncio.Queue()
        unfinished = set(ids)
        self._submit(_Add(request, prompt_ids, {rid: _Stream(loop, out_queue, i) for i, rid in enumerate(ids)}))
        try:
            while unfinished:
                items = [await out_queue.get()]
                while not out_queue.empty():
                    items.append(out_queue.get_nowait())
                chunks = []
                for item in items:
                    if isinstance(item, BaseException):
                        if chunks:
                            yield chunks
                        raise item
                    index, out = item
                    if out.finished:
                        unfinished.discard(out.request_id)
                    chunks.append(_to_chunk(index, out))
                yield chunks
        finally:
            if unfinished:
                self._submit(_Abort(sorted(unfinished)))

    # -- caller side ------------------------------------------------------------------------------------------

    def _check_available(self) -> None:
        if self.error is not None:
            raise ModelUnavailableError("The model's engine failed and could not be restarted; retry later.")
        if not self._available.is_set():
            raise ModelUnavailableError("The model's engine is restarting; retry shortly.",
                                        retry_after=self._retry_after_s)

    def _check_fits(self, prompt_ids: list[int], request: GenerationRequest) -> None:
        try:
            validate_request(prompt_ids, request.params, self.max_model_len)
        except ModelInputError as e:
            raise InvalidRequestError(e.message, param=e.param) from None

    def _reserve(self, count: int) -> None:
        with self._lock:
            if self._pending + count > self.max_pending:
                raise ServerOverloadedError(
                    f"the model has {self._pending} requests in flight (limit {self.max_pending}); retry later"
                )
            self._pending += count

    def _release(self, count: int) -> None:
        with self._lock:
            self._pending -= count

    def _submit(self, command: _Add | _Abort) -> None:
        self._commands.put(command)
        self._wakeup.set()

    # -- engine thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve()
            except EngineDeadError as e:
                if not self._recover(e):
                    return
            except BaseException as e:  # the loop must never die silently: fail every caller, report unhealthy
                log.exception("LLM engine loop died")
                self.error = e
                self._fail_everything(ModelUnavailableError("The model's engine stopped; retry later."))
                return

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._drain_commands()
            if not self.engine.has_unfinished():
                if self._wakeup.wait(timeout=IDLE_CHECK_S):
                    self._wakeup.clear()
                elif not self.engine.is_alive():
                    raise EngineDeadError("the engine process exited while idle")
                continue
            for event in self.engine.step():
                if isinstance(event, StepOutputs):
                    for out in event.outputs:
                        self._deliver(out)
                else:
                    self._fail_request(event)

    def _recover(self, cause: EngineDeadError) -> bool:
        """Fail what is in flight with a 503, then restart the engine with backoff; False when giving up."""
        up_s = time.monotonic() - self._started_at
        self._failures = 1 if up_s >= self.restarts.stable_after_s else self._failures + 1
        delay_s = self.restarts.delay_s(self._failures)
        self._retry_after_s = self._start_s + delay_s
        self._available.clear()
        log.error("the model's engine stopped after %.1f s (%d in a row): %s", up_s, self._failures, cause)
        self._fail_everything(ModelUnavailableError("The model's engine stopped and is restarting; retry shortly.",
                                                    retry_after=self._retry_after_s))
        self.engine.close()
        while self._failures < self.restarts.max_failures:
            if self._stop.wait(delay_s):
                return False
            try:
                self.engine = self._start()
            except Exception as e:  # noqa: BLE001 - counted and retried; the last one is kept for the health check
                cause = e
                self._failures += 1
                delay_s = self.restarts.delay_s(self._failures)
                log.error("restarting the model's engine failed (%d in a row): %s", self._failures, e)
                continue
            if self._stop.is_set():  # shut down while it started
                self.engine.close()
                return False
            log.info("the model's engine restarted in %.1f s", self._start_s)
            self._available.set()
            return True
        self.error = cause
        log.error("the model's engine failed %d times in a row; reporting unhealthy", self._failures)
        return False

    def _start(self) -> EngineClient:
        started = time.monotonic()
        engine = self._start_engine()
        self._started_at = time.monotonic()
        self._start_s = self._started_at - started
        return engine

    def _queued_commands(self) -> Iterator[_Add | _Abort]:
        while True:
            try:
                yield self._commands.get_nowait()
            except queue.Empty:
                return

    def _drain_commands(self) -> None:
        for command in self._queued_commands():
            if isinstance(command, _Add):
                self._add(command)
            else:
                live = [rid for rid in command.request_ids if rid in self._streams]
                for rid in live:
                    self._forget(rid)
                self.engine.abort(live)

    def _add(self, command: _Add) -> None:
        self._streams.update(command.streams)  # first, so that an engine death below fails them too
        requests = []
        for i, rid in enumerate(command.streams):
            params = command.request.params
            if params.seed is not None and i > 0:
                params = replace(params, seed=params.seed + i)
            requests.append(AddRequest(rid, command.prompt_token_ids, params, command.request.grammar))
        self.engine.add_many(requests)  # the n choices start in one step

    def _fail_everything(self, error: ServingError) -> None:
        """Fail every request in flight and every command not yet run (their callers hear `error`)."""
        for rid in list(self._streams):
            self._fail(rid, error)
        for command in self._queued_commands():
            if isinstance(command, _Add):
                first = next(iter(command.streams.values()))
                _call_soon(first, error)
                self._release(len(command.streams))

    def _deliver(self, out: RequestOutput) -> None:
        stream = self._streams.get(out.request_id)
        if stream is None:
            return
        if out.finished:  # released first: a caller that reads its last chunk finds its capacity back
            self._forget(out.request_id)
        self._post(out.request_id, stream, (stream.index, out))

    def _fail_request(self, failed: RequestFailed) -> None:
        self._fail(failed.request_id, _as_client_error(failed.error))

    def _fail(self, rid: str, error: BaseException) -> None:
        stream = self._streams.get(rid)
        if stream is not None:
            self._forget(rid)
            self._post(rid, stream, error)

    def _post(self, rid: str, stream: _Stream, item) -> None:
        """Hand `item` to the caller's loop; if that loop is closed nobody listens: abort the request instead."""
        if _call_soon(stream, item):
            return
        self._forget(rid)
        try:
            self.engine.abort([rid])
        except EngineDeadError:  # the next step or idle check finds it dead and restarts it
            pass

    def _forget(self, rid: str) -> None:
        if self._streams.pop(rid, None) is not None:
            self._release(1)


def _call_soon(stream: _Stream, item) -> bool:
    """Put `item` on the stream's queue from the engine thread; False when the caller's loop is closed."""
    try:
        stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
        return True
    except RuntimeError:  # "Event loop is closed"
        return False


def _as_client_error(e: Exception) -> ServingError:
    if isinstance(e, ModelInputError):
        return InvalidRequestError(e.message, param=e.param)
    if isinstance(e, EngineOverloadedError):
        return ServerOverloadedError(str(e))
    return ModelExecutionError("Generation failed in the model's engine; the server log has the details.",
                               code="model_error")


def _to_chunk(index: int, out: RequestOutput) -> GenerationChunk:
    return GenerationChunk(
        index=index,
        text=out.new_text,
        token_ids=list(out.new_token_ids),
        logprobs=out.logprobs,
        finish_reason=out.finish_reason,
        prompt_tokens=out.num_prompt_tokens,
        completion_tokens=out.num_output_tokens,
    )
