"""/v1/chat/completions: request and response models mirroring OpenAI's chat API."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from models.llm.guided import Grammar
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
from serving.protocol.tools import (
    MAX_TOOLS,
    ChatTool,
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
    ToolCallOut,
    ToolChoice,
    bounded_tools,
    checked,
    forced_call_grammar,
)
from serving.tools.template import render_tools


class ContentPart(OpenAIRequest):
    type: Name
    text: Prompt | None = None


class ChatMessage(OpenAIRequest):
    """One input message; content is text or a list of text parts (other part types are refused)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[
        Prompt | bounded_list(ContentPart, MAX_CONTENT_PARTS) | None,
        one_message("content must be a string or a list of content parts"),
    ] = None
    name: Name | None = None
    tool_calls: bounded_list(ToolCall, MAX_TOOLS) | None = None
    tool_call_id: Name | None = None

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
        """{"role", "content"} and, for an assistant's calls, "tool_calls" [{"name", "arguments"}] (rendered into
        text by serving/tools/template.py)."""
        # Most chat templates know no "developer" role; it is OpenAI's new name for "system".
        role = "system" if self.role == "developer" else self.role
        message = {"role": role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [{"name": c.function.name, "arguments": c.function.arguments}
                                     for c in self.tool_calls]
        return message


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions body."""

    model: Name
    messages: bounded_list(ChatMessage, MAX_MESSAGES, min_items=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: bounded_tools() | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
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
        """The engine-side request: messages flattened to text (tools and tool messages in the generic template,
        serving/tools/template.py), the grammar of response_format or of a forced tool call, n choices."""
        params = self.to_sampling_params(context)
        tools = self.active_tools()
        messages = [m.to_engine_message() for m in self.messages]
        return GenerationRequest(
            request_id=request_id,
            params=params,
            messages=render_tools(messages, [t.function.model_dump(exclude_none=True) for t in tools]),
            n=self.n,
            grammar=self._grammar(tools),
        )

    def active_tools(self) -> list[ChatTool]:
        """The tools the model is offered: none with tool_choice "none"."""
        return [] if self.tool_choice == "none" else list(self.tools or [])

    def forced_tool(self) -> str | None:
        """"*" for tool_choice "required", the function's name for a named choice, else None."""
        if self.tool_choice == "required":
            return "*"
        return self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None

    def _grammar(self, tools: list[ChatTool]):
        forced = self.forced_tool()
        if forced is not None:
            return forced_call_grammar(tools, None if forced == "*" else forced)
        return self.response_format.grammar() if self.response_format is not None else None

    def _reject_unsupported(self) -> None:
        """Refuse fields whose silent omission would change the answer's meaning, and tool requests that cannot
        be met."""
        if self.functions or self.function_call not in (None, "none"):
            raise InvalidRequestError("The deprecated functions/function_call are not supported; use tools and "
                                      "tool_choice.", param="functions")
        self._check_tools()
        if self.audio is not None or "audio" in (self.modalities or []):
            raise InvalidRequestError("Audio output is not supported by chat models here.", param="modalities")

    def _check_tools(self) -> None:
        names = [t.function.name for t in self.tools or []]
        forced = self.forced_tool()
        if forced is not None and not names:
            raise InvalidRequestError("tool_choice needs tools; none were given.", param="tool_choice")
        if forced not in (None, "*") and forced not in names:
            raise InvalidRequestError(f"tool_choice names the function '{forced}', which is not among the tools "
                                      f"({', '.join(names)}).", param="tool_choice")
        structured = self.response_format is not None and self.response_format.type != "text"
        if structured and self.active_tools():
            raise InvalidRequestError("response_format with a JSON schema and tools in the same request is not "
                                      "supported; set tool_choice to 'none' or drop response_format.",
                                      param="response_format")
        for i, tool in enumerate(self.tools or []):
            checked(Grammar.json_schema(tool.function.parameters_schema()), f"tools[{i}].function.parameters")


def _is_none(value: Any) -> bool:
    return value is None


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
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = Field(default=None, exclude_if=_is_none)


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


class DeltaMessage(OpenAIResponse):
    """A streamed delta; unset fields are left out of the JSON, as OpenAI does."""

    model_config = ConfigDict(extra="allow", json_schema_serialization_defaults_required=False)

    role: str | None = Field(default=None, exclude_if=_is_none)
    content: str | None = Field(default=None, exclude_if=_is_none)
    tool_calls: list[dict] | None = Field(default=None, exclude_if=_is_none)  # OpenAI's partial tool-call deltas


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
