"""Shared protocol pieces: base configs, OpenAI's error body, usage, the sampling fields of chat and completions."""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator, field_validator

from models.llm.types import SamplingParams
from serving.errors import InvalidRequestError

MAX_CHOICES = 16  # n; more choices per request would let one caller monopolise the engine
MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_TOP_LOGPROBS = 20  # as OpenAI's chat API
MIN_LOGPROB = -9999.0  # JSON has no -inf; reported instead of it, as OpenAI does


class OpenAIRequest(BaseModel):
    """Base of request bodies: unknown fields are accepted and ignored (OpenAI clients send extras)."""

    model_config = ConfigDict(extra="ignore")


class OpenAIResponse(BaseModel):
    """Base of response bodies."""

    model_config = ConfigDict(extra="allow")


class ErrorInfo(OpenAIResponse):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIResponse):
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorInfo


class UsageInfo(OpenAIResponse):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class StreamOptions(OpenAIRequest):
    include_usage: bool = False


def random_id(prefix: str) -> str:
    """An OpenAI-style object id such as `chatcmpl-<32 hex>`."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def one_message(message: str) -> WrapValidator:
    """Replace pydantic's one-error-per-union-branch output by one readable message."""

    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            raise ValueError(message) from exc

    return WrapValidator(validate)


class SamplingFields(OpenAIRequest):
    """The sampling fields chat and completions share, with OpenAI's ranges, plus vLLM-style extensions."""

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    seed: int | None = None
    stop: Annotated[str | list[str] | None, one_message("stop must be a string or a list of strings")] = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions (vLLM names); they map 1:1 onto SamplingParams.
    top_k: int = Field(default=-1, ge=-1)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(stops)}")
        return [s for s in stops if s]  # an empty stop string would end every choice at once

    @field_validator("top_k")
    @classmethod
    def _check_top_k(cls, top_k: int) -> int:
        if top_k == 0:
            raise ValueError("top_k must be -1 (disabled) or at least 1")
        return top_k

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int | None, top_logprobs: int | None) -> SamplingParams:
        """SamplingParams from the shared fields; `top_logprobs` None means no logprobs at all."""
        if self.logit_bias:
            raise InvalidRequestError("logit_bias is not supported by this server.", param="logit_bias")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=list(self.stop or []),
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            logprobs=top_logprobs is not None,
            top_logprobs=top_logprobs or 0,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )
