"""Tool calls in chat responses: each choice's text read by a tool reader (serving/tools/parsers.py) into
`message.tool_calls`, or, streaming, into OpenAI's tool-call deltas (id, type and name first, then arguments)."""
from __future__ import annotations

from dataclasses import dataclass, field

from serving.clients import ModelCard
from serving.protocol.chat import AssistantMessage, ChatCompletionRequest, DeltaMessage
from serving.protocol.common import random_id
from serving.protocol.tools import FunctionCallOut, ToolCallOut
from serving.tools.parsers import TOOL_PARSERS, Deltas, ToolReader, make_reader

DEFAULT_TOOL_PARSER = "hermes"


def tool_parser(card: ModelCard) -> str:
    """The model's `tool_parser` option (how `auto` output is recognised), hermes by default."""
    parser = card.metadata.get("tool_parser") or DEFAULT_TOOL_PARSER
    return parser if parser in TOOL_PARSERS else DEFAULT_TOOL_PARSER


def new_reader(body: ChatCompletionRequest, card: ModelCard) -> ToolReader | None:
    """A reader for one choice of a request that offers tools, else None (plain text)."""
    if not body.active_tools():
        return None
    return make_reader(body.forced_tool() is not None, tool_parser(card),
                       1 if body.parallel_tool_calls is False else None)


def finish_reason(reader: ToolReader | None, reason: str | None) -> str | None:
    """"tool_calls" when the choice ended by itself with calls; a choice cut by its length keeps "length"."""
    return "tool_calls" if reader is not None and reader.calls and reason == "stop" else reason


def message(text: str, reader: ToolReader | None, reason: str | None) -> AssistantMessage:
    """The whole assistant message of a choice."""
    if reader is None:
        return AssistantMessage(content=text)
    reader.feed(text)
    reader.finish()
    if not reader.calls or reason != "stop":
        return AssistantMessage(content=text)
    calls = [ToolCallOut(id=random_id("call"), function=FunctionCallOut(name=c.name, arguments=c.arguments))
             for c in reader.calls]
    return AssistantMessage(content=reader.content.strip() or None, tool_calls=calls)


@dataclass
class StreamedCalls:
    """One choice's streamed tool calls: turns a reader's Deltas into DeltaMessages, ids made once per call."""

    reader: ToolReader
    ids: dict[int, str] = field(default_factory=dict)

    def deltas(self, text: str, finished: bool) -> list[DeltaMessage]:
        out = self.reader.feed(text) if text else Deltas()
        if finished:
            more = self.reader.finish()
            out = Deltas(out.content + more.content, out.calls + more.calls)
        messages = [DeltaMessage(content=out.content)] if out.content else []
        for call in out.calls:
            if call.name is not None:
                self.ids[call.index] = random_id("call")
                entry = {"index": call.index, "id": self.ids[call.index], "type": "function",
                         "function": {"name": call.name, "arguments": call.arguments}}
            elif call.arguments:
                entry = {"index": call.index, "function": {"arguments": call.arguments}}
            else:
                continue
            messages.append(DeltaMessage(tool_calls=[entry]))
        return messages
