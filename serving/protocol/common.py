"""Shared protocol pieces: base configs, OpenAI's error body, usage, the sampling fields of chat and completions."""
from __future__ import annotations

import time
import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.llm.types import SamplingParams
from serving.errors import InvalidRequestError
from serving.protocol.limits import (
    MAX_CHARS_PER_TOKEN,
    MAX_CHOICES,
    MAX_LOGPROB_ENTRIES,
    MAX_STOP_SEQUENCES,
    MAX_STOP_TOKEN_IDS,
    MAX_TOP_K,
    Name,
    Seed,
    StopString,
    TokenId,
    bounded_list,
    one_message,
    too_many,
)

MAX_LOGIT_BIAS = 1024  # entries of logit_bias
MIN_LOGPROB = -9999.0  # JSON has no -inf; reported instead of it, as OpenAI does


class OpenAIRequest(BaseModel):
    """Base of request bodies: unknown fields are accepted and ignored (OpenAI clients send extras); NaN and
    Infinity (which Python's JSON parser accepts) are refused in every float."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class OpenAIResponse(BaseModel):
    """Base of response bodies; their JSON schema lists every field as required, since every field is sent."""

    model_config = ConfigDict(extra="allow", json_schema_serialization_defaults_required=True)


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


def stop_sequences(stop: str | list[str] | None) -> list[str]:
    """The stop strings as a list of at most MAX_STOP_SEQUENCES (a validator's array_above_max_length otherwise)."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise too_many("stop sequences", len(stops), MAX_STOP_SEQUENCES)
    return [s for s in stops if s]  # an empty stop string would end every choice at once


class SamplingFields(OpenAIRequest):
    """The sampling fields chat and completions share, with OpenAI's ranges, plus vLLM-style extensions."""

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    seed: Seed | None = None
    stop: Annotated[
        StopString | list[StopString] | None,
        one_message("stop must be a string or a list of strings"),
    ] = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: Annotated[dict[str, float], Field(max_length=MAX_LOGIT_BIAS)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Name | None = None
    # Extensions (vLLM names); they map 1:1 onto SamplingParams.
    top_k: int = Field(default=-1, ge=-1, le=MAX_TOP_K)
    ignore_eos: bool = False
    stop_token_ids: bounded_list(TokenId, MAX_STOP_TOKEN_IDS) | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> list[str]:
        return stop_sequences(stop)

    @field_validator("top_k")
    @classmethod
    def _check_top_k(cls, top_k: int) -> int:
        if top_k == 0:
            raise ValueError("top_k must be -1 (disabled) or at least 1")
        return top_k

    @staticmethod
    def check_context(prompts: list[str | list[int]], param: str, max_tokens: int | None, context: int | None) -> None:
        """What the model's context size (None: unknown) tells before any tokenizer runs: max_tokens leaves room for
        a prompt, and no prompt (the text or token ids of one engine request) can be too long to fit, at
        MAX_CHARS_PER_TOKEN characters or one id per token."""
        if context is None:
            return
        if max_tokens is not None and max_tokens >= context:
            raise InvalidRequestError(
                f"max_tokens is too large: {max_tokens}. This model's maximum context length is {context} tokens, "
                "prompt and completion together.", param="max_tokens", code="context_length_exceeded",
            )
        for prompt in prompts:
            ids = isinstance(prompt, list)
            limit = context - 1 if ids else context * MAX_CHARS_PER_TOKEN
            if len(prompt) > limit:
                raise InvalidRequestError(
                    f"This model's maximum context length is {context} tokens; the {param} has {len(prompt)} "
                    f"{'token ids' if ids else 'characters'}, more than can fit.",
                    param=param, code="context_length_exceeded",
                )

    @staticmethod
    def check_logprob_entries(top_logprobs: int | None, choices: int, max_tokens: int | None) -> None:
        """Refuse a response of more than MAX_LOGPROB_ENTRIES logprob entries (choices x (top + 1) x tokens); an
        unknown max_tokens (no max_tokens, and a model whose context size is unknown) is not checked here."""
        if top_logprobs is None or max_tokens is None:
            return
        entries = choices * (top_logprobs + 1) * max_tokens
        if entries > MAX_LOGPROB_ENTRIES:
            raise InvalidRequestError(
                f"The response would hold {entries} logprob entries (choices x (top_logprobs + 1) x max_tokens); "
                f"at most {MAX_LOGPROB_ENTRIES} are allowed: lower n, top_logprobs or max_tokens.",
                param="max_tokens", code="logprobs_too_large",
            )

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int | None, top_logprobs: int | None) -> SamplingParams:
        """SamplingParams from the shared fields; `top_logprobs` None means no logprobs at all."""
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
            logit_bias=self.token_bias(),
        )

    def token_bias(self) -> dict[int, float]:
        """logit_bias as {token id: bias}: OpenAI's rules, keys are token ids written as strings and values lie in
        -100..100 (ids outside the model's vocabulary are the engine's 400)."""
        bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            if not key.isdigit() or len(key) > 10:
                raise InvalidRequestError(f"logit_bias: invalid key {key[:32]!r}; keys are token ids as strings.",
                                          param="logit_bias")
            if not -100.0 <= value <= 100.0:
                raise InvalidRequestError(f"logit_bias: the bias of token {key} is {value}; it must lie in "
                                          "-100..100.", param="logit_bias")
            bias[int(key)] = float(value)
        return bias
