"""The generic tool template: tools, assistant tool calls and tool results as plain chat messages.

Most small models' chat templates (SmolLM2's included) know nothing of tools, so the messages are rewritten into
roles every template knows, in the Hermes format that vLLM's `hermes` parser and many fine-tunes use:
the tools are listed in the system message inside <tools></tools> with how to call them; an assistant's calls
become `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` lines of its content; a tool result becomes a
user message `<tool_response>...</tool_response>`. The rendered messages then go through the model's own template.
"""
from __future__ import annotations

import json
from typing import Any

TOOLS_PROMPT = (
    "You may call one or more functions to assist with the user query. The functions are listed within "
    "<tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\nFor each function call, return a JSON object with "
    "the function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def tool_call_text(name: str, arguments: str) -> str:
    """One call as the model is told to write it (`arguments` is JSON text)."""
    try:
        args: Any = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:  # history as the client sent it; the model sees it as it was
        args = arguments
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>"


def render_tools(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Messages ({"role", "content", optional "tool_calls" [{"name", "arguments"}]}) with tools and tool messages
    in the generic format; `tools`: OpenAI function definitions ({"name", "description", "parameters"})."""
    out = [_plain(m) for m in messages]
    if not tools:
        return out
    listing = TOOLS_PROMPT.format(tools="\n".join(json.dumps({"type": "function", "function": t}) for t in tools))
    if out and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + listing}
    else:
        out.insert(0, {"role": "system", "content": listing})
    return out


def _plain(message: dict) -> dict:
    role, content = message["role"], message.get("content") or ""
    if role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}
    calls = message.get("tool_calls") or []
    if calls:
        parts = [content] if content else []
        parts += [tool_call_text(c["name"], c["arguments"]) for c in calls]
        return {"role": role, "content": "\n".join(parts)}
    return {"role": role, "content": content}
