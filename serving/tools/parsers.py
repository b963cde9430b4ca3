"""Reading tool calls out of a model's output, whole or as it streams.

Three readers, each fed the output's text deltas and told when it ends:
- `ForcedCallReader`: the output of tool_choice "required" or a named function, which a grammar made exactly one
  `{"name":"f","arguments":{...}}` (compact: the grammar allows no free whitespace). The call's id and name go out
  as soon as the name is complete, then the arguments' text in pieces, as OpenAI streams them.
- `HermesReader` (tool_parser `hermes`, the default): calls inside <tool_call>...</tool_call> anywhere in free
  text (the format of template.py, vLLM's `hermes` parser); the text around them is content. A block streams as
  one call once it closes.
- `JsonReader` (tool_parser `json`): an output that is a single JSON object {"name", "arguments" (or
  "parameters")} is a call (Llama-3 style); anything else is content.
Every reader gives the same calls whole and streamed: the streamed pieces join to the whole call.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from models.llm.config import TOOL_PARSERS  # noqa: F401 - the names this module reads; re-exported

_FORCED_HEAD = re.compile(r'\{"name":"((?:[^"\\]|\\.)*)","arguments":')
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class CallDelta:
    """A piece of call `index`: its name on the first piece (with a fresh id made by the caller), then arguments."""

    index: int
    name: str | None = None
    arguments: str = ""


@dataclass
class Deltas:
    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)


@dataclass
class ParsedCall:
    name: str
    arguments: str  # JSON text


class ToolReader:
    """Base: feed(text) per delta, finish() at the end; both return what may be sent now. `calls` and `content`
    hold everything read so far (the non-streaming answer once finished)."""

    def __init__(self, max_calls: int | None = None) -> None:
        self.calls: list[ParsedCall] = []
        self.content = ""
        self.max_calls = max_calls  # parallel_tool_calls false: 1; calls past it are dropped

    def feed(self, text: str) -> Deltas:
        raise NotImplementedError

    def finish(self) -> Deltas:
        raise NotImplementedError

    def _content(self, text: str) -> Deltas:
        self.content += text
        return Deltas(content=text)

    def _whole_call(self, name: str, arguments: str) -> Deltas:
        if self.max_calls is not None and len(self.calls) >= self.max_calls:
            return Deltas()
        self.calls.append(ParsedCall(name, arguments))
        return Deltas(calls=[CallDelta(len(self.calls) - 1, name, arguments)])


def make_reader(forced: bool, parser: str, max_calls: int | None = None) -> ToolReader:
    """The reader for a request: forced (required / named function: one call) or the model's `tool_parser` for
    auto, keeping at most `max_calls` calls."""
    if forced:
        return ForcedCallReader()
    return JsonReader(max_calls) if parser == "json" else HermesReader(max_calls)


class ForcedCallReader(ToolReader):
    def __init__(self) -> None:
        super().__init__()
        self._text = ""
        self._sent = 0  # characters of self._text already sent (past the head, once the call started)
        self._started = False

    def feed(self, text: str) -> Deltas:
        self._text += text
        if not self._started:
            head = _FORCED_HEAD.match(self._text)
            if head is None:
                return Deltas()
            self._started = True
            self._sent = head.end()
            self.calls.append(ParsedCall(json.loads(f'"{head.group(1)}"'), ""))
            return Deltas(calls=[CallDelta(0, self.calls[0].name, self._take(hold=True))])
        return Deltas(calls=[CallDelta(0, None, self._take(hold=True))])

    def finish(self) -> Deltas:
        if not self._started:  # cut short before the name: no call, the text is all there is
            return self._content(self._text)
        rest = self._take(hold=False)
        return Deltas(calls=[CallDelta(0, None, rest)]) if rest else Deltas()

    def _take(self, hold: bool) -> str:
        """Arguments text not sent yet. While streaming, trailing braces and spaces are held back (one of them
        closes the call); at the end, the last brace is the call's own and is dropped."""
        body = self._text.rstrip()
        if hold:
            end = len(self._text.rstrip("} \n"))
        else:
            end = len(body) - 1 if body.endswith("}") else len(body)
        end = max(end, self._sent)
        piece, self._sent = self._text[self._sent:end], end
        self.calls[0].arguments += piece
        return piece


class HermesReader(ToolReader):
    def __init__(self, max_calls: int | None = None) -> None:
        super().__init__(max_calls)
        self._pending = ""  # text not yet classified: a possible start of <tool_call>, or an open block

    def feed(self, text: str) -> Deltas:
        self._pending += text
        out = Deltas()
        while True:
            start = self._pending.find(_OPEN)
            if start < 0:
                keep = _partial_suffix(self._pending, _OPEN)
                if len(self._pending) > keep:
                    _merge(out, self._content(self._pending[:len(self._pending) - keep]))
                    self._pending = self._pending[len(self._pending) - keep:]
                return out
            if start > 0:
                _merge(out, self._content(self._pending[:start]))
                self._pending = self._pending[start:]
            end = self._pending.find(_CLOSE)
            if end < 0:
                return out
            _merge(out, self._block(self._pending[len(_OPEN):end], self._pending[:end + len(_CLOSE)]))
            self._pending = self._pending[end + len(_CLOSE):]

    def finish(self) -> Deltas:
        pending, self._pending = self._pending, ""
        if pending.startswith(_OPEN):  # the model stopped before closing its block
            return self._block(pending[len(_OPEN):], pending)
        return self._content(pending) if pending else Deltas()

    def _block(self, inside: str, raw: str) -> Deltas:
        call = _as_call(inside)
        return self._whole_call(*call) if call else self._content(raw)


class JsonReader(ToolReader):
    def __init__(self, max_calls: int | None = None) -> None:
        super().__init__(max_calls)
        self._text = ""
        self._buffering: bool | None = None  # decided by the first non-space character

    def feed(self, text: str) -> Deltas:
        self._text += text
        if self._buffering is None and self._text.strip():
            self._buffering = self._text.lstrip().startswith("{")
        if self._buffering is False:
            out, self._text = self._content(self._text), ""
            return out
        return Deltas()

    def finish(self) -> Deltas:
        text, self._text = self._text, ""
        call = _as_call(text) if self._buffering else None
        return self._whole_call(*call) if call else (self._content(text) if text else Deltas())


def _as_call(text: str) -> tuple[str, str] | None:
    """(name, arguments JSON) when `text` is one JSON object {"name": str, "arguments" | "parameters": {...}}."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get("arguments", value.get("parameters", {}))
    return value["name"], args if isinstance(args, str) else json.dumps(args)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that begins `marker` (text that may still become it)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def _merge(into: Deltas, more: Deltas) -> None:
    into.content += more.content
    into.calls += more.calls
