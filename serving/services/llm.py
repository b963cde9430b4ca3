"""Drives an LLMEngine from one background thread and streams each request's deltas to asyncio callers.

The engine is not thread-safe, so everything that touches it (tokenizer included: fast tokenizers raise
"Already borrowed" when shared across threads) runs on the engine thread. Callers talk to it through a
command queue; outputs come back through `loop.call_soon_threadsafe` into one asyncio.Queue per call.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, replace
from typing import AsyncIterator

from models.errors import EngineOverloadedError, ModelInputError
from models.llm.types import LLMEngine, RequestOutput
from serving.clients import GenerationChunk, GenerationRequest
from serving.errors import InvalidRequestError, ServerOverloadedError

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    """Where one engine request's outputs go: the caller's loop and queue, and its choice index."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    index: int


class LLMService:
    """Implements serving.clients.ChatClient over an engine. `max_pending` bounds queued + running requests.

    By default `max_pending` is the engine's own bound, `max_running + max_queued`, so a request the engine would
    refuse is answered 429 at once on the caller's side, without a round trip through the engine thread.
    """

    def __init__(self, engine: LLMEngine, max_pending: int | None = None):
        self.engine = engine
        if max_pending is None:
            max_pending = getattr(engine, "max_running", 16) + getattr(engine, "max_queued", 240)
        self.max_pending = max_pending
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}  # engine request id -> stream; touched on the engine thread only
        self._pending = 0  # engine requests accepted and not finished; guarded by _lock
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopped = False
        self.error: BaseException | None = None  # set if the loop itself died; health checks read it
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def is_alive(self) -> bool:
        engine_alive = getattr(self.engine, "is_alive", None)  # an EngineProcess: is the child still there?
        return self._thread.is_alive() and self.error is None and (engine_alive is None or engine_alive())

    def shutdown(self) -> None:
        self._stopped = True
        self._wakeup.set()
        self._thread.join(timeout=5)
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

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
        ids = [f"{request.request_id}-{i}" for i in range(request.n)]
        self._reserve(len(ids))
        loop = asyncio.get_running_loop()
        out_queue: asyncio.Queue = asyncio.Queue()
        streams = {rid: _Stream(loop, out_queue, i) for i, rid in enumerate(ids)}
        unfinished = set(ids)
        self._submit(("add", request, streams))
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
                self._submit(("abort", sorted(unfinished)))

    # -- caller side ------------------------------------------------------------------------------------------

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

    def _submit(self, command: tuple) -> None:
        self._commands.put(command)
        self._wakeup.set()

    # -- engine thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopped:
                self._drain_commands()
                if not self.engine.has_unfinished_requests():
                    self._wakeup.wait(timeout=1.0)
                    self._wakeup.clear()
                    continue
                for out in self._step():
                    self._deliver(out)
        except BaseException as e:  # the loop must never die silently: fail every caller, report unhealthy
            log.exception("LLM engine loop died")
            self.error = e
            for rid in list(self._streams):
                self._fail(rid, RuntimeError("the model's engine stopped; see the server log"))

    def _step(self) -> list[RequestOutput]:
        try:
            return self.engine.step()
        except Exception:
            # A step failure is not attributable to one request: fail those running, keep serving new ones.
            log.exception("engine step failed; failing its requests")
            for rid in list(self._streams):
                self.engine.abort(rid)
                self._fail(rid, RuntimeError("generation failed; see the server log"))
            return []

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                self._add(command[1], command[2])
            else:
                for rid in command[1]:
                    if rid in self._streams:
                        self.engine.abort(rid)
                        self._forget(rid)

    def _add(self, request: GenerationRequest, streams: dict[str, _Stream]) -> None:
        try:
            prompt_ids = self._prompt_ids(request)
            for i, rid in enumerate(streams):
                params = request.params
                if params.seed is not None and i > 0:
                    params = replace(params, seed=params.seed + i)
                self.engine.add_request(rid, prompt_ids, params)
                self._streams[rid] = streams[rid]
        except Exception as e:
            for rid in streams:
                if rid in self._streams:
                    self.engine.abort(rid)
            first = next(iter(streams.values()))
            first.loop.call_soon_threadsafe(first.queue.put_nowait, _as_client_error(e))
            self._release(len(streams) - sum(rid in self._streams for rid in streams))
            for rid in list(streams):
                self._forget(rid)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        tok = self.engine.tokenizer
        if request.messages is not None:
            ids = tok.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
                ids = ids["input_ids"]
            return list(ids)
        if isinstance(request.prompt, str):
            return list(tok.encode(request.prompt, add_special_tokens=False)) if request.prompt else []
        return list(request.prompt or [])

    def _deliver(self, out: RequestOutput) -> None:
        stream = self._streams.get(out.request_id)
        if stream is None:
            return
        if self._post(out.request_id, stream, (stream.index, out)) and out.finished:
            self._forget(out.request_id)

    def _fail(self, rid: str, error: BaseException) -> None:
        stream = self._streams.get(rid)
        if stream is not None and self._post(rid, stream, error):
            self._forget(rid)

    def _post(self, rid: str, stream: _Stream, item) -> bool:
        """Hand `item` to the caller's loop; if that loop is closed nobody listens: abort the request instead."""
        try:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
            return True
        except RuntimeError:  # "Event loop is closed"
            self.engine.abort(rid)
            self._forget(rid)
            return False

    def _forget(self, rid: str) -> None:
        if self._streams.pop(rid, None) is not None:
            self._release(1)


def _as_client_error(e: Exception) -> Exception:
    if isinstance(e, ModelInputError):
        return InvalidRequestError(e.message, param=e.param)
    if isinstance(e, EngineOverloadedError):
        return ServerOverloadedError(str(e))
    return e


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
