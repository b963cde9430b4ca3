"""/v1/responses (stateless): the Responses API's request, turned into a chat completion request, and its objects.

Served without server state: `previous_response_id`, `store: true` and `conversation` are refused with a 400 that
says so. Input is text or items (messages with input_text / output_text parts, function_call and
function_call_output items); `instructions` becomes the system message; `text.format` becomes response_format;
function `tools` and `tool_choice` become the chat API's.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from serving.errors import InvalidRequestError
from serving.protocol.chat import ChatCompletionRequest
from serving.protocol.common import OpenAIRequest, OpenAIResponse
from serving.protocol.limits import MAX_MESSAGES, MAX_TOKENS, Name, Prompt, bounded_list
from serving.protocol.tools import FUNCTION_NAME, MAX_TOOLS


class InputPart(OpenAIRequest):
    type: Name
    text: Prompt | None = None


class InputItem(OpenAIRequest):
    """A message ({role, content}), a function_call or a function_call_output."""

    type: Literal["message", "function_call", "function_call_output"] = "message"
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: Prompt | bounded_list(InputPart, 256) | None = None
    call_id: Name | None = None
    name: Name | None = None
    arguments: Prompt | None = None
    output: Prompt | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            bad = next((p.type for p in self.content if p.type not in ("input_text", "output_text", "text")), None)
            if bad is not None:
                raise InvalidRequestError(f"input content parts of type '{bad}' are not supported: text only.",
                                          param="input")
            return "\n".join(p.text or "" for p in self.content)
        return self.content or ""


class FunctionTool(OpenAIRequest):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: Prompt | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(OpenAIRequest):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: Name | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(OpenAIRequest):
    format: TextFormat | None = None


class ResponsesRequest(OpenAIRequest):
    """POST /v1/responses body (the stateless subset)."""

    model: Name
    input: Prompt | bounded_list(InputItem, MAX_MESSAGES, min_items=1)
    instructions: Prompt | None = None
    tools: bounded_list(FunctionTool, MAX_TOOLS) | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool | None = None
    previous_response_id: Name | None = None
    conversation: Any = None
    metadata: dict[str, Any] | None = None
    user: Name | None = None

    def to_chat(self) -> ChatCompletionRequest:
        """The same request in the chat API's terms (its checks, tool readers and grammar apply)."""
        if self.previous_response_id is not None or self.conversation is not None:
            raise InvalidRequestError("previous_response_id and conversation need stored responses; this server "
                                      "is stateless: send the whole input.", param="previous_response_id")
        if self.store:
            raise InvalidRequestError("store: true is not supported; this server keeps no responses.",
                                      param="store")
        body: dict[str, Any] = {
            "model": self.model, "messages": self._messages(), "max_tokens": self.max_output_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "parallel_tool_calls": self.parallel_tool_calls,
        }
        if self.tools:
            body["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                             for t in self.tools]
        if self.tool_choice is not None:
            body["tool_choice"] = _chat_tool_choice(self.tool_choice)
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type != "text":
            body["response_format"] = ({"type": "json_object"} if fmt.type == "json_object" else
                                       {"type": "json_schema", "json_schema": {"name": fmt.name or "output",
                                                                               "schema": fmt.schema_,
                                                                               "strict": fmt.strict}})
        return ChatCompletionRequest.model_validate(body)

    def _messages(self) -> list[dict]:
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return messages + [{"role": "user", "content": self.input}]
        for item in self.input:
            if item.type == "function_call":
                call = {"id": item.call_id or "call", "type": "function",
                        "function": {"name": item.name or "", "arguments": item.arguments or ""}}
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif item.type == "function_call_output":
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output or ""})
            else:
                messages.append({"role": item.role or "user", "content": item.text()})
        return messages


def _chat_tool_choice(choice: Any) -> Any:
    """The Responses API's {"type": "function", "name"} as the chat API's {"type", "function": {"name"}}."""
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


class ResponseUsage(OpenAIResponse):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict = Field(default_factory=lambda: {"cached_tokens": 0})
    output_tokens_details: dict = Field(default_factory=lambda: {"reasoning_tokens": 0})


class ResponseObject(OpenAIResponse):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress"]
    model: str
    output: list[dict]
    usage: ResponseUsage | None = None
    incomplete_details: dict | None = None
    error: dict | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict] = Field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    text: dict = Field(default_factory=lambda: {"format": {"type": "text"}})
    metadata: dict = Field(default_factory=dict)
    store: bool = False


class ResponseEvent(OpenAIResponse):
    """One streamed event: its `type`, its `sequence_number`, and the fields of that type."""

    type: str
    sequence_number: int
