"""/v1/completions: request and response models mirroring OpenAI's legacy completions API."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from models.llm.types import SamplingParams, TokenLogprob
from serving.clients import GenerationRequest
from serving.errors import InvalidRequestError
from serving.protocol.common import MIN_LOGPROB, OpenAIResponse, SamplingFields, UsageInfo
from serving.protocol.tools import ResponseFormat
from serving.protocol.limits import (
    ARRAY_TOO_LONG,
    MAX_BEST_OF,
    MAX_PROMPTS,
    MAX_SEQUENCES,
    MAX_TOKENS,
    MAX_TOP_LOGPROBS,
    Name,
    Prompt,
    as_list,
    check_total,
    text_or_tokens,
)


class CompletionRequest(SamplingFields):
    """POST /v1/completions body. Each prompt of a list is generated n times; choice index = prompt_i * n + j."""

    model: Name
    prompt: text_or_tokens("prompt", MAX_PROMPTS)
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_TOKENS)  # OpenAI's default here; null: up to the context
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: Prompt | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_BEST_OF)
    response_format: ResponseFormat | None = None  # an extension (vLLM's too): the completion must match it

    @field_validator("prompt")
    @classmethod
    def _bounded(cls, prompt: str | list) -> str | list:
        check_total(as_list(prompt), "prompt")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: a string or a token-id list is one prompt."""
        return as_list(self.prompt)

    def to_sampling_params(self, context: int | None = None) -> SamplingParams:
        """Engine parameters, checked against the model's context size when it is known."""
        self._reject_unsupported()
        sequences = len(self.prompts()) * self.n
        if sequences > MAX_SEQUENCES:
            raise InvalidRequestError(
                f"Too many sequences: {len(self.prompts())} prompts x n={self.n} = {sequences}; at most "
                f"{MAX_SEQUENCES} are allowed per request.", param="n", code=ARRAY_TOO_LONG,
            )
        self.check_context(self.prompts(), "prompt", self.max_tokens, context)
        self.check_logprob_entries(self.logprobs, sequences, self.max_tokens or context)
        return self.sampling_params(max_tokens=self.max_tokens, top_logprobs=self.logprobs)

    def to_generation_requests(self, request_id: str, context: int | None = None) -> list[GenerationRequest]:
        """One engine request per prompt, ids `<request_id>-<prompt_i>`, each with n choices (seed + j each)."""
        params = self.to_sampling_params(context)
        grammar = self.response_format.grammar() if self.response_format is not None else None
        return [
            GenerationRequest(request_id=f"{request_id}-{i}", params=params, prompt=prompt, n=self.n, grammar=grammar)
            for i, prompt in enumerate(self.prompts())
        ]

    def echo_text(self, prompt_index: int) -> str:
        """What echo prepends to the choices of one prompt ("" without echo)."""
        return self.prompts()[prompt_index] if self.echo else ""  # type: ignore[return-value]

    def _reject_unsupported(self) -> None:
        """Refuse fields whose silent omission would change the answer's meaning."""
        if self.suffix:
            raise InvalidRequestError("suffix (insertion) is not supported.", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequestError("best_of is not supported; use n.", param="best_of")
        if self.echo and self.logprobs is not None:
            raise InvalidRequestError("echo together with logprobs is not supported.", param="echo")
        if self.echo and any(not isinstance(p, str) for p in self.prompts()):
            raise InvalidRequestError("echo is only supported for text prompts.", param="echo")


class CompletionLogprobs(OpenAIResponse):
    """The legacy logprobs format: parallel lists, top alternatives as {token: logprob} dicts."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)

    @classmethod
    def from_tokens(cls, logprobs: list[TokenLogprob], top_k: int, offset: int) -> CompletionLogprobs:
        """Entries for consecutive tokens whose text starts at character `offset` of the choice's text."""
        out = cls()
        for lp in logprobs:
            out.tokens.append(lp.token)
            out.token_logprobs.append(max(lp.logprob, MIN_LOGPROB))
            out.top_logprobs.append({tok: max(val, MIN_LOGPROB) for _, tok, val in lp.top[:top_k]})
            out.text_offset.append(offset)
            offset += len(lp.token)
        return out

    def extend(self, other: CompletionLogprobs) -> None:
        self.tokens += other.tokens
        self.token_logprobs += other.token_logprobs
        self.top_logprobs += other.top_logprobs
        self.text_offset += other.text_offset


class CompletionChoice(OpenAIResponse):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(OpenAIResponse):
    """The whole response, and also each streamed chunk (OpenAI uses the same object for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None
