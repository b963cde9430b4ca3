"""POST /v1/responses (stateless): the chat path underneath, answered as Response objects or the Responses API's
streamed events (response.created ... response.output_text.delta ... response.completed)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Response

from serving.api.common import context_size, get_router, json_response
from serving.api.errors import error_payload
from serving.api.generation import ChoiceState, UsageCounter, collect, open_generation
from serving.api.openapi import named_events
from serving.api.streaming import ClosingStreamingResponse, MergedStream, close_stream
from serving.api.tool_calls import message, new_reader
from serving.clients import ModelCard
from serving.protocol.chat import ChatCompletionRequest
from serving.protocol.common import UsageInfo, now, random_id
from serving.protocol.responses import ResponseEvent, ResponseObject, ResponsesRequest, ResponseUsage
from serving.router import ModelRouter

router = APIRouter(tags=["responses"])


@router.post("/v1/responses", response_model=ResponseObject, responses=named_events("ResponseEvent"))
async def create_response(body: ResponsesRequest, models: ModelRouter = Depends(get_router)) -> Response:
    """A response; with stream=true, the Responses API's events (no [DONE])."""
    chat = body.to_chat()
    client, card = models.client(body.model, "chat"), models.card(body.model)
    draft = _Draft(body, chat, card)
    stream = await open_generation(client, [chat.to_generation_request(draft.id, context_size(card))])
    if body.stream:
        return ClosingStreamingResponse(_sse(_events(stream, draft), stream), media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    choices, usage = await collect(stream, 1)
    return json_response(draft.finished(choices[0][1], usage))


@dataclass
class _Draft:
    """The response under construction: ids, the request's echo fields, the output items."""

    body: ResponsesRequest
    chat: ChatCompletionRequest
    card: ModelCard
    id: str = field(default_factory=lambda: random_id("resp"))
    created_at: int = field(default_factory=now)
    message_id: str = field(default_factory=lambda: random_id("msg"))

    def object(self, status: str, output: list[dict], usage: UsageInfo | None = None,
               finish: str | None = None) -> ResponseObject:
        b = self.body
        return ResponseObject(
            id=self.id, created_at=self.created_at, status=status, model=b.model, output=output,
            usage=None if usage is None else ResponseUsage(input_tokens=usage.prompt_tokens,
                                                           output_tokens=usage.completion_tokens,
                                                           total_tokens=usage.total_tokens),
            incomplete_details={"reason": "max_output_tokens"} if finish == "length" else None,
            instructions=b.instructions, max_output_tokens=b.max_output_tokens, temperature=b.temperature,
            top_p=b.top_p, tools=[t.model_dump(by_alias=True, exclude_none=True) for t in b.tools or []],
            tool_choice=b.tool_choice or "auto", parallel_tool_calls=b.parallel_tool_calls is not False,
            text={"format": b.text.format.model_dump(by_alias=True, exclude_none=True)}
            if b.text and b.text.format else {"format": {"type": "text"}},
            metadata=b.metadata or {},
        )

    def output(self, state: ChoiceState) -> list[dict]:
        """The output items of the finished text: a message, function calls, or both."""
        reply = message(state.text, new_reader(self.chat, self.card), state.finish_reason)
        items = [self.message_item(reply.content, "completed")] if reply.content else []
        for call in reply.tool_calls or []:
            items.append({"type": "function_call", "id": random_id("fc"), "call_id": call.id,
                          "name": call.function.name, "arguments": call.function.arguments, "status": "completed"})
        return items

    def message_item(self, text: str | None, status: str) -> dict:
        content = [] if text is None else [_text_part(text)]
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content}

    def finished(self, state: ChoiceState, usage: UsageInfo) -> ResponseObject:
        status = "incomplete" if state.finish_reason == "length" else "completed"
        return self.object(status, self.output(state), usage, state.finish_reason)


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


async def _events(stream: MergedStream, draft: _Draft) -> AsyncIterator[dict]:
    """Text streams as output_text deltas; with tools offered, the items go out whole at the end (a call's
    arguments in one delta), since whether text is a call is known only then."""
    yield {"type": "response.created", "response": draft.object("in_progress", [])}
    yield {"type": "response.in_progress", "response": draft.object("in_progress", [])}
    tools = bool(draft.chat.active_tools())
    state, usage = ChoiceState(), UsageCounter()
    if not tools:
        yield {"type": "response.output_item.added", "output_index": 0,
               "item": draft.message_item(None, "in_progress")}
        yield {"type": "response.content_part.added", "item_id": draft.message_id, "output_index": 0,
               "content_index": 0, "part": _text_part("")}
    async for source, chunk in stream:
        usage.add(source, chunk)
        state.add(chunk)
        if chunk.text and not tools:
            yield {"type": "response.output_text.delta", "item_id": draft.message_id, "output_index": 0,
                   "content_index": 0, "delta": chunk.text, "logprobs": []}
    final = draft.finished(state, usage.info())
    if not tools:
        for event in _text_done(draft, state.text):
            yield event
    else:
        for index, item in enumerate(final.output):
            for event in _item_whole(index, item):
                yield event
    yield {"type": "response.incomplete" if final.status == "incomplete" else "response.completed",
           "response": final}


def _text_done(draft: _Draft, text: str) -> list[dict]:
    return [
        {"type": "response.output_text.done", "item_id": draft.message_id, "output_index": 0, "content_index": 0,
         "text": text, "logprobs": []},
        {"type": "response.content_part.done", "item_id": draft.message_id, "output_index": 0, "content_index": 0,
         "part": _text_part(text)},
        {"type": "response.output_item.done", "output_index": 0, "item": draft.message_item(text, "completed")},
    ]


def _item_whole(index: int, item: dict) -> list[dict]:
    """The events of one finished output item: added, its content (text or arguments), done."""
    if item["type"] == "message":
        text = item["content"][0]["text"]
        empty = {**item, "status": "in_progress", "content": []}
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [{"type": "response.output_item.added", "output_index": index, "item": empty},
                {"type": "response.content_part.added", **where, "part": _text_part("")},
                {"type": "response.output_text.delta", **where, "delta": text, "logprobs": []},
                {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
                {"type": "response.content_part.done", **where, "part": _text_part(text)},
                {"type": "response.output_item.done", "output_index": index, "item": item}]
    where = {"item_id": item["id"], "output_index": index}
    return [{"type": "response.output_item.added", "output_index": index,
             "item": {**item, "arguments": "", "status": "in_progress"}},
            {"type": "response.function_call_arguments.delta", **where, "delta": item["arguments"]},
            {"type": "response.function_call_arguments.done", **where, "arguments": item["arguments"]},
            {"type": "response.output_item.done", "output_index": index, "item": item}]


async def _sse(events: AsyncIterator[dict], source: MergedStream) -> AsyncIterator[str]:
    """`event: <type>` / `data: <json>` pairs numbered by sequence_number; an error mid-stream is an `error` event."""
    sequence = 0
    try:
        async for fields in events:
            event = ResponseEvent(sequence_number=sequence, **fields)
            sequence += 1
            yield f"event: {event.type}\ndata: {event.model_dump_json()}\n\n"
    except Exception as exc:  # noqa: BLE001 - mapped (and logged when unknown) by error_payload
        _, body = error_payload(exc)
        error = {"type": "error", "sequence_number": sequence, **body["error"]}
        yield f"event: error\ndata: {json.dumps(error)}\n\n"
    finally:
        await close_stream(events)
        await close_stream(source)
