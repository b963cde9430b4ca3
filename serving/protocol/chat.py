"""/v1/chat/completions: request and response models mirroring OpenAI's chat API."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from models.llm.types import SamplingParams, TokenLogprob
from serving.clients import GenerationRequest
from serving.errors import InvalidRequestError
from serving.protocol.common import MIN_LOGPROB, OpenAIRequest, OpenAIResponse, SamplingFields, UsageInfo
from serving.protocol.limits import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_MODALITIES,
    MAX_TOKENS,
    MAX_TOP_LOGPROBS,
    Name,
    Prompt,
    bounded_list,
    check_total,
    one_message,
)


class ContentPart(OpenAIRequest):
    type: Name
    text: Prompt | None = None


class ChatMessage(OpenAIRequest):
    """One input message; content is text or a list of text parts (other part types are refused)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[
        Prompt | bounded_list(ContentPart, MAX_CONTENT_PARTS) | None,
        one_message("content must be a string or a list of content parts"),
    ] = None
    name: Name | None = None
    tool_calls: list[Any] | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        for part in content if isinstance(content, list) else []:
            if part.type != "text":
                raise ValueError(f"content parts of type '{part.type}' are not supported: this model takes text only")
            if part.text is None:
                raise ValueError("a text content part needs a 'text' field")
        return content

    def texts(self) -> list[str]:
        """The content's strings (several for a list of parts)."""
        if isinstance(self.content, list):
            return [part.text or "" for part in self.content]
        return [self.content or ""]

    def text(self) -> str:
        """The content flattened to text; text parts are joined by newlines."""
        return "\n".join(self.texts())

    def to_engine_message(self) -> dict:
        # Most chat templates know no "developer" role; it is OpenAI's new name for "system".
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class ResponseFormat(OpenAIRequest):
    type: Name


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions body."""

    model: Name
    messages: bounded_list(ChatMessage, MAX_MESSAGES, min_items=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: bounded_list(Name, MAX_MODALITIES) | None = None

    @field_validator("messages")
    @classmethod
    def _bounded_text(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        check_total((part for m in messages for part in m.texts()), "the messages' text")
        return messages

    def to_sampling_params(self, context: int | None = None) -> SamplingParams:
        """Engine parameters; max_completion_tokens wins over max_tokens, and None means up to the context size
        (`context`: the model's, when known)."""
        self._reject_unsupported()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true.", param="top_logprobs")
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        top = (self.top_logprobs or 0) if self.logprobs else None
        self.check_context(["".join(part for m in self.messages for part in m.texts())], "messages", max_tokens,
                           context)
        self.check_logprob_entries(top, self.n, max_tokens or context)
        return self.sampling_params(max_tokens=max_tokens, top_logprobs=top)

    def to_generation_request(self, request_id: str, context: int | None = None) -> GenerationRequest:
        """The engine-side request: messages flattened to {"role", "content": str}, n choices (seed + i each)."""
        return GenerationRequest(
            request_id=request_id,
            params=self.to_sampling_params(context),
            messages=[m.to_engine_message() for m in self.messages],
            n=self.n,
        )

    def _reject_unsupported(self) -> None:
        """Refuse fields whose silent omission would change the answer's meaning."""
        if self.tools or self.functions:
            raise InvalidRequestError("Tool and function calling are not supported.", param="tools")
        if self.tool_choice not in (None, "none") or self.function_call not in (None, "none"):
            raise InvalidRequestError("Tool and function calling are not supported.", param="tool_choice")
        if any(m.tool_calls for m in self.messages):
            raise InvalidRequestError("Messages with tool_calls are not supported.", param="messages")
        if self.response_format is not None and self.response_format.type != "text":
            raise InvalidRequestError(
                f"response_format type '{self.response_format.type}' is not supported; only 'text' is.",
                param="response_format",
            )
        if self.audio is not None or "audio" in (self.modalities or []):
            raise InvalidRequestError("Audio output is not supported by chat models here.", param="modalities")


class TopLogprob(OpenAIResponse):
    token: str
    logprob: float
    bytes: list[int] | None = None

    @classmethod
    def of(cls, token: str, logprob: float) -> TopLogprob:
        return cls(token=token, logprob=max(logprob, MIN_LOGPROB), bytes=list(token.encode("utf-8")))


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(OpenAIResponse):
    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None

    @classmethod
    def from_tokens(cls, logprobs: list[TokenLogprob], top_k: int) -> ChatChoiceLogprobs:
        """OpenAI's chat format: per token its text, logprob, UTF-8 bytes and top_k alternatives."""
        content = []
        for lp in logprobs:
            entry = ChatTokenLogprob.of(lp.token, lp.logprob)
            entry.top_logprobs = [TopLogprob.of(tok, val) for _, tok, val in lp.top[:top_k]]
            content.append(entry)
        return cls(content=content)


class AssistantMessage(OpenAIResponse):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatCompletionChoice(OpenAIResponse):
    index: int
    message: AssistantMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(OpenAIResponse):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


def _is_none(value: Any) -> bool:
    return value is None


class DeltaMessage(OpenAIResponse):
    """A streamed delta; unset fields are left out of the JSON, as OpenAI does."""

    model_config = ConfigDict(extra="allow", json_schema_serialization_defaults_required=False)

    role: str | None = Field(default=None, exclude_if=_is_none)
    content: str | None = Field(default=None, exclude_if=_is_none)


class ChatChunkChoice(OpenAIResponse):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(OpenAIResponse):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None
