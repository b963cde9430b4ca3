"""EngineCore: an LLMEngine driven with per-request error isolation; LocalEngine: the same, as an in-process client.

Isolation, as in vLLM's engine core: a request whose `add_request` raises fails alone (RequestFailed) and the
engine goes on; a `step()` that raises fails the requests in flight (logged once, with the traceback) and the
engine goes on, unless `max_step_failures` steps in a row raised: then the engine is broken (EngineDeadError) and
its owner restarts it. The engine process's child loop and LocalEngine share this class.

A request with a grammar waits in a GrammarStage while a worker thread compiles it (models/llm/guided.py), so
that a large schema never stalls the other streams; it joins the engine at the first step after its compile.
"""
from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from models.errors import EngineOverloadedError, ModelInputError
from models.llm.guided import GrammarCompiler
from models.llm.types import LLMEngine
from models.llm.validation import output_budget
from serving.services.engine_messages import (AddRequest, EngineDeadError, EngineEvent, EngineInfo,
                                              EngineRequestError, RequestFailed, StepOutputs, portable_error)

log = logging.getLogger(__name__)

MAX_STEP_FAILURES = 3  # one failing step may be a bad request's doing; three in a row mean the engine is broken
COMPILE_WAIT_S = 0.05  # an engine with nothing else to do waits this long for a compile per step (no busy loop)


class GrammarStage:
    """Requests whose grammar a worker thread is compiling; the compiler (and its tokenizer copy) is made on the
    engine thread at the first grammar, since the engine's tokenizer must not be read from two threads."""

    def __init__(self, tokenizer: Any, vocab_size: int, max_model_len: int):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._max_model_len = max_model_len
        self._compiler: GrammarCompiler | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[str, tuple[AddRequest, Future]] = {}

    def submit(self, request: AddRequest) -> None:
        if self._compiler is None:
            self._compiler = GrammarCompiler(self._tokenizer, self._vocab_size)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-compile")
        # The engine's own budget rule; add_request refuses a request over it.
        budget = output_budget(len(request.prompt_token_ids), request.params.max_tokens, self._max_model_len)
        future = self._executor.submit(self._compiler.compile, request.grammar, budget=budget)
        self._pending[request.request_id] = (request, future)

    def drop(self, request_id: str) -> bool:
        """Forget a request still compiling; True if it was."""
        return self._pending.pop(request_id, None) is not None

    def __len__(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Forget pending compiles and let the worker thread go (a compile under way finishes on its own)."""
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def compiled(self, wait_s: float) -> list[tuple[AddRequest, Future]]:
        """The requests whose compile is over (waiting up to `wait_s` for the first), in submission order."""
        if self._pending and wait_s > 0:
            wait([f for _, f in self._pending.values()], timeout=wait_s, return_when=FIRST_COMPLETED)
        done = [(rid, entry) for rid, entry in self._pending.items() if entry[1].done()]
        for rid, _ in done:
            del self._pending[rid]
        return [entry for _, entry in done]


class EngineCore:
    """Wraps an LLMEngine (one thread drives it) so that no request's input can stop it; see the module docstring."""

    def __init__(self, engine: LLMEngine, max_step_failures: int = MAX_STEP_FAILURES):
        self.engine = engine
        self.max_step_failures = max_step_failures
        self._live: set[str] = set()  # added, not finished, failed or aborted
        self._failed_steps = 0
        self._grammars = GrammarStage(engine.tokenizer, engine.vocab_size, engine.max_model_len)

    def add(self, request: AddRequest) -> RequestFailed | None:
        """Add the request to the engine (one with a grammar once it is compiled), or return why it was refused."""
        if request.grammar is not None:
            self._grammars.submit(request)
            return None
        return self._add(request, None)

    def _add(self, request: AddRequest, constraint: Any) -> RequestFailed | None:
        try:
            if constraint is None:
                self.engine.add_request(request.request_id, request.prompt_token_ids, request.params)
            else:
                self.engine.add_request(request.request_id, request.prompt_token_ids, request.params,
                                        constraint=constraint)
        except Exception as e:  # noqa: BLE001 - whatever the engine raises fails this request only
            if not isinstance(e, (ModelInputError, EngineOverloadedError)):
                log.exception("the engine refused request %s", request.request_id)
            return RequestFailed(request.request_id, portable_error(e))
        self._live.add(request.request_id)
        return None

    def abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            if self._grammars.drop(request_id):
                continue
            if request_id in self._live:
                self._live.discard(request_id)
                self.engine.abort(request_id)

    def has_work(self) -> bool:
        return self.engine.has_unfinished_requests() or len(self._grammars) > 0

    def close(self) -> None:
        """Stop compiling; the engine itself is its owner's to close."""
        self._grammars.close()

    def step(self) -> list[EngineEvent]:
        """One engine step as events (compiled requests join first); EngineDeadError when steps keep failing."""
        events = self._admit_compiled()
        if not self.engine.has_unfinished_requests():  # only compiles pending: an empty step, so the parent hears
            return events + [StepOutputs([])]
        try:
            outputs = self.engine.step()
        except Exception as e:  # noqa: BLE001 - fail the step's requests, keep the engine
            return events + self._fail_step(e)
        self._failed_steps = 0
        for out in outputs:
            if out.finished:
                self._live.discard(out.request_id)
        return events + [StepOutputs(outputs)]

    def _admit_compiled(self) -> list[EngineEvent]:
        wait_s = 0.0 if self.engine.has_unfinished_requests() else COMPILE_WAIT_S
        events: list[EngineEvent] = []
        for request, future in self._grammars.compiled(wait_s):
            error = future.exception()
            refused = (RequestFailed(request.request_id, portable_error(error)) if error is not None
                       else self._add(request, future.result()))
            if refused is not None:
                events.append(refused)
        return events

    def _fail_step(self, error: Exception) -> list[EngineEvent]:
        # The protocol does not say which requests a step ran, so every request in flight fails with it.
        self._failed_steps += 1
        failed = sorted(self._live)
        log.error("engine step failed (%d in a row); failing its %d requests", self._failed_steps, len(failed),
                  exc_info=error)
        if self._failed_steps >= self.max_step_failures:
            raise EngineDeadError(f"{self._failed_steps} engine steps in a row raised; last: {error!r}")
        try:
            self.abort(failed)
        except Exception as e:  # noqa: BLE001 - an engine that cannot even abort is broken
            raise EngineDeadError(f"the engine failed to abort after a failed step: {e!r}") from e
        reason = EngineRequestError(f"the engine's step failed: {type(error).__name__}")
        return [RequestFailed(request_id, reason) for request_id in failed]


class LocalEngine:
    """EngineClient over an LLMEngine in this process (the `fake:` engine in tests; no process to lose)."""

    def __init__(self, engine: LLMEngine):
        self.core = EngineCore(engine)
        self.info = EngineInfo.of(engine)
        self.stats = engine.stats()  # refreshed after each step, so readers on other threads never call the engine
        self._refusals: list[RequestFailed] = []  # reported with the next step, as an engine process would

    def add(self, request: AddRequest) -> None:
        refused = self.core.add(request)
        if refused is not None:
            self._refusals.append(refused)

    def add_many(self, requests: list[AddRequest]) -> None:
        for request in requests:
            self.add(request)

    def abort(self, request_ids: list[str]) -> None:
        self.core.abort(request_ids)

    def step(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        if self._refusals:
            events, self._refusals = list(self._refusals), []
        if self.core.has_work():
            events += self.core.step()
            self.stats = self.core.engine.stats()
        return events

    def has_unfinished(self) -> bool:
        return bool(self._refusals) or self.core.has_work()

    def is_alive(self) -> bool:
        return True

    def close(self) -> None:
        self.core.close()
        self.core.engine.close()
