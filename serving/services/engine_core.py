"""EngineCore: an LLMEngine driven with per-request error isolation; LocalEngine: the same, as an in-process client.

Isolation, as in vLLM's engine core: a request whose `add_request` raises fails alone (RequestFailed) and the
engine goes on; a `step()` that raises fails the requests in flight (logged once, with the traceback) and the
engine goes on, unless `max_step_failures` steps in a row raised: then the engine is broken (EngineDeadError) and
its owner restarts it. The engine process's child loop and LocalEngine share this class.
"""
from __future__ import annotations

import logging

from models.errors import EngineOverloadedError, ModelInputError
from models.llm.types import LLMEngine
from serving.services.engine_messages import (AddRequest, EngineDeadError, EngineEvent, EngineInfo,
                                              EngineRequestError, RequestFailed, StepOutputs, portable_error)

log = logging.getLogger(__name__)

MAX_STEP_FAILURES = 3  # one failing step may be a bad request's doing; three in a row mean the engine is broken


class EngineCore:
    """Wraps an LLMEngine (one thread drives it) so that no request's input can stop it; see the module docstring."""

    def __init__(self, engine: LLMEngine, max_step_failures: int = MAX_STEP_FAILURES):
        self.engine = engine
        self.max_step_failures = max_step_failures
        self._live: set[str] = set()  # added, not finished, failed or aborted
        self._failed_steps = 0

    def add(self, request: AddRequest) -> RequestFailed | None:
        """Add the request to the engine, or return why it was refused."""
        try:
            self.engine.add_request(request.request_id, request.prompt_token_ids, request.params)
        except Exception as e:  # noqa: BLE001 - whatever the engine raises fails this request only
            if not isinstance(e, (ModelInputError, EngineOverloadedError)):
                log.exception("the engine refused request %s", request.request_id)
            return RequestFailed(request.request_id, portable_error(e))
        self._live.add(request.request_id)
        return None

    def abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            if request_id in self._live:
                self._live.discard(request_id)
                self.engine.abort(request_id)

    def has_work(self) -> bool:
        return self.engine.has_unfinished_requests()

    def step(self) -> list[EngineEvent]:
        """One engine step as events; EngineDeadError when steps keep failing."""
        try:
            outputs = self.engine.step()
        except Exception as e:  # noqa: BLE001 - fail the step's requests, keep the engine
            return self._fail_step(e)
        self._failed_steps = 0
        for out in outputs:
            if out.finished:
                self._live.discard(out.request_id)
        return [StepOutputs(outputs)]

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
        self.core.engine.close()
