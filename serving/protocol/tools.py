"""Tools and structured output on /v1/chat/completions: `tools`, `tool_choice`, tool calls and `response_format`,
mirroring OpenAI's chat API, and the grammars they turn into."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from models.errors import ModelInputError
from models.llm.guided import Grammar, check_grammar
from serving.errors import InvalidRequestError
from serving.protocol.common import OpenAIRequest, OpenAIResponse
from serving.protocol.limits import Name, Prompt, bounded_list

MAX_TOOLS = 128  # OpenAI's limit on `tools`
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionDefinition(OpenAIRequest):
    name: str = Field(pattern=FUNCTION_NAME)
    description: Prompt | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def parameters_schema(self) -> dict[str, Any]:
        """The arguments' JSON schema; a function without `parameters` takes an empty object, as OpenAI says."""
        return self.parameters if self.parameters is not None else {"type": "object", "properties": {}}


class ChatTool(OpenAIRequest):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(OpenAIRequest):
    name: Name


class NamedToolChoice(OpenAIRequest):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(OpenAIRequest):
    name: Name
    arguments: Prompt  # JSON text, as OpenAI sends it


class ToolCall(OpenAIRequest):
    """An assistant message's tool call (in the request history and, as ToolCallOut, in the response)."""

    id: Name
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallOut(OpenAIResponse):
    name: str
    arguments: str


class ToolCallOut(OpenAIResponse):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class JSONSchemaFormat(OpenAIRequest):
    name: Name
    description: Prompt | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIRequest):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    def grammar(self) -> Grammar | None:
        """The grammar the output must match (None for text); InvalidRequestError for a bad schema."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return Grammar("json_object")
        if self.json_schema is None:
            raise InvalidRequestError("response_format of type 'json_schema' needs a 'json_schema' object.",
                                      param="response_format.json_schema")
        schema = self.json_schema.schema_ if self.json_schema.schema_ is not None else {"type": "object"}
        return checked(Grammar.json_schema(schema), "response_format.json_schema.schema")


def checked(grammar: Grammar, param: str) -> Grammar:
    """The grammar, if llguidance can compile it; else InvalidRequestError naming `param` and the problem."""
    try:
        check_grammar(grammar, param)
    except ModelInputError as e:
        raise InvalidRequestError(e.message, param=param) from None
    return grammar


def bounded_tools():
    return bounded_list(ChatTool, MAX_TOOLS)


def forced_call_grammar(tools: list[ChatTool], name: str | None) -> Grammar:
    """The grammar of one call `{"name": ..., "arguments": {...}}` to the named function, or to any of `tools`
    (tool_choice "required"), with the arguments constrained to the function's parameter schema."""
    chosen = [t for t in tools if name is None or t.function.name == name]
    variants = [{
        "type": "object",
        "properties": {"name": {"const": t.function.name}, "arguments": t.function.parameters_schema()},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    } for t in chosen]
    schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return checked(Grammar.json_schema(schema), "tools")
