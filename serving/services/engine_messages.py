"""What LLMService says to an engine and hears back, in process or across the engine process's pipe.

Parent -> engine: AddRequest, AbortRequests, Stop. Engine -> parent: EngineReady once, then StepOutputs after every
step (empty ones included, so a waiting parent always hears of progress), RequestFailed for a request the engine
refused or whose step raised, EngineStatsReport now and then, and EngineFailed when the engine cannot go on.
Every message pickles: errors cross as ModelInputError, EngineOverloadedError or EngineRequestError only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from models.errors import EngineOverloadedError, ModelInputError
from models.llm.guided import Grammar
from models.llm.types import RequestOutput, SamplingParams


@dataclass(frozen=True)
class EngineInfo:
    """What callers need from the engine: its tokenizer (a copy, when it crossed a pipe), its limits, and its stats
    at load (which say the path it runs: batched, device, CUDA graphs), the first report a caller can read."""

    tokenizer: Any
    max_model_len: int
    max_running: int
    max_queued: int
    stats: Any = None  # the engine's stats() when it became ready (models.llm.types.EngineStats)

    @classmethod
    def of(cls, engine) -> "EngineInfo":
        return cls(engine.tokenizer, engine.max_model_len, engine.max_running, engine.max_queued, engine.stats())


@dataclass(frozen=True)
class AddRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    grammar: Grammar | None = None  # compiled on the engine side, off its thread (engine_core.GrammarStage)


@dataclass(frozen=True)
class AbortRequests:
    request_ids: list[str]


@dataclass(frozen=True)
class Stop:
    """Finish: the engine process exits."""


@dataclass(frozen=True)
class EngineReady:
    info: EngineInfo


@dataclass(frozen=True)
class StepOutputs:
    outputs: list[RequestOutput]


class EngineRequestError(RuntimeError):
    """The engine failed one request for a reason of its own (not the caller's input): a 500 for that caller."""


@dataclass(frozen=True)
class RequestFailed:
    """The request is over: ModelInputError (the caller's input), EngineOverloadedError, or EngineRequestError."""

    request_id: str
    error: Exception


@dataclass(frozen=True)
class EngineStatsReport:
    stats: Any  # the engine's stats() (models.llm.types.EngineStats)


@dataclass(frozen=True)
class EngineFailed:
    """The engine cannot go on (it failed to build, or its steps keep raising); `message` holds the traceback."""

    message: str


EngineEvent = StepOutputs | RequestFailed


class EngineDeadError(RuntimeError):
    """The engine is gone (its process exited, hung or reported EngineFailed): restart it to go on."""


class EngineClient(Protocol):
    """What LLMService drives, from one thread: an engine in this process or in a child process."""

    info: EngineInfo
    stats: Any  # the engine's latest stats() snapshot (models.llm.types.EngineStats); None before the first

    def add(self, request: AddRequest) -> None:
        """Queue a request; a refusal comes back later as a RequestFailed event. EngineDeadError if gone."""

    def add_many(self, requests: list[AddRequest]) -> None:
        """Queue requests that the engine admits together, before its next step (the n choices of one request:
        admitted a step apart, the first choice's first decode would run in the second's prefill step, on other
        kernels, and a seeded request would not repeat itself)."""

    def abort(self, request_ids: list[str]) -> None:
        """Drop requests (unknown ids are ignored); nothing more is reported for them."""

    def step(self) -> list[EngineEvent]:
        """Events of the engine's next step (and of any already done). EngineDeadError if the engine is gone."""

    def has_unfinished(self) -> bool:
        """True while a request added and not aborted has not finished or failed."""

    def is_alive(self) -> bool:
        """False once the engine is gone (checked when idle, so that a death is noticed without a request)."""

    def close(self) -> None:
        """Release the engine (stop its process); idempotent."""


def portable_error(error: Exception) -> Exception:
    """The error as it may cross the pipe: typed model errors as they are, anything else as EngineRequestError."""
    if isinstance(error, (ModelInputError, EngineOverloadedError)):
        return error
    return EngineRequestError(f"{type(error).__name__}: {error}")
