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

from models.errors import ModelInputError
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
    """Implements serving.clients.ChatClient over an engine. `max_pending` bounds queued + running requests."""

    def __init__(self, engine: LLMEngine, max_pending: int = 256):
        self.engine = engine
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
        return self._thread.is_alive() and self.error is None

    def shutdown(self) -> None:
        self._stopped = True
        self._wakeup.set()
        self._thread.join(timeout=5)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream chunks of all n choices; on exit (done, error or cancelled) abort what is still running."""
        ids = [f"{request.request_id}-{i}" for i in range(request.n)]
        self._reserve(len(ids))
        loop = asyncio.get_running_loop()
        out_queue: asyncio.Queue = asyncio.Queue()
        streams = {rid: _Stream(loop, out_queue, i) for i, rid in enumerate(ids)}
        unfinished = set(ids)
        self._submit(("add", request, streams))
        try:
            while unfinished:
                item = await out_queue.get()
                if isinstance(item, BaseException):
                    raise item
                index, out = item
                if out.finished:
                    unfinished.discard(out.request_id)
                yield _to_chunk(index, out)
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
        stream.loop.call_soon_threadsafe(stream.queue.put_nowait, (stream.index, out))
        if out.finished:
            self._forget(out.request_id)

    def _fail(self, rid: str, error: BaseException) -> None:
        stream = self._streams.get(rid)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, error)
            self._forget(rid)

    def _forget(self, rid: str) -> None:
        if self._streams.pop(rid, None) is not None:
            self._release(1)


def _as_client_error(e: Exception) -> Exception:
    if isinstance(e, ModelInputError):
        return InvalidRequestError(e.message, param=e.param)
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
