"""POST /v1/chat/completions, streaming (SSE) and not."""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Response

from serving.api.common import context_size, get_router, json_response
from serving.api.generation import ChoiceState, UsageCounter, collect, open_generation
from serving.api.openapi import streamed
from serving.api.tool_calls import StreamedCalls, finish_reason, message, new_reader
from serving.api.streaming import MergedStream, sse_response
from serving.protocol.chat import (
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    DeltaMessage,
)
from serving.clients import GenerationChunk, ModelCard
from serving.protocol.common import UsageInfo, now, random_id
from serving.router import ModelRouter

router = APIRouter(tags=["chat"])


@dataclass(frozen=True)
class _Meta:
    """What every object of one response repeats."""

    id: str
    created: int
    model: str

    def chunk(self, choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)


@router.post(
    "/v1/chat/completions", response_model=ChatCompletionResponse, responses=streamed("ChatCompletionChunk")
)
async def create_chat_completion(body: ChatCompletionRequest, models: ModelRouter = Depends(get_router)) -> Response:
    """A chat completion; with stream=true, chat.completion.chunk events ending in [DONE]."""
    client, card = models.client(body.model, "chat"), models.card(body.model)
    meta = _Meta(id=random_id("chatcmpl"), created=now(), model=body.model)
    request = body.to_generation_request(meta.id, context_size(card))
    stream = await open_generation(client, [request])
    if body.stream:
        return sse_response(_chunks(stream, body, meta, card), stream)
    choices, usage = await collect(stream, body.n)
    return json_response(
        ChatCompletionResponse(
            id=meta.id,
            created=meta.created,
            model=meta.model,
            choices=[_choice(index, state, body, card) for index, state in choices],
            usage=usage,
        )
    )


def _logprobs(logprobs: list | None, body: ChatCompletionRequest) -> ChatChoiceLogprobs | None:
    if not body.logprobs or logprobs is None:
        return None
    return ChatChoiceLogprobs.from_tokens(logprobs, body.top_logprobs or 0)


def _choice(index: int, state: ChoiceState, body: ChatCompletionRequest, card: ModelCard) -> ChatCompletionChoice:
    reader = new_reader(body, card)
    return ChatCompletionChoice(
        index=index,
        message=message(state.text, reader, state.finish_reason),
        logprobs=_logprobs(state.logprobs, body),
        finish_reason=finish_reason(reader, state.finish_reason),
    )


async def _chunks(stream: MergedStream, body: ChatCompletionRequest, meta: _Meta,
                  card: ModelCard) -> AsyncIterator[ChatCompletionChunk]:
    """A role chunk per choice, content (or tool-call) deltas, a finish chunk per choice, then usage if asked."""
    usage = UsageCounter()
    readers = {index: new_reader(body, card) for index in range(body.n)}
    calls = {index: StreamedCalls(r) for index, r in readers.items() if r is not None}
    for index in range(body.n):
        yield meta.chunk([ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
    async for source, chunk in stream:
        usage.add(source, chunk)
        for i, delta in enumerate(_deltas(chunk, calls.get(chunk.index))):
            logprobs = _logprobs(chunk.logprobs, body) if i == 0 else None  # once per engine chunk
            yield meta.chunk([ChatChunkChoice(index=chunk.index, delta=delta, logprobs=logprobs)])
        if chunk.finish_reason:
            reason = finish_reason(readers[chunk.index], chunk.finish_reason)
            yield meta.chunk([ChatChunkChoice(index=chunk.index, delta=DeltaMessage(), finish_reason=reason)])
    if body.include_usage():
        yield meta.chunk([], usage=usage.info())


def _deltas(chunk: GenerationChunk, calls: StreamedCalls | None) -> list[DeltaMessage]:
    """The deltas of one engine chunk: its text, or what a tool reader lets out of it."""
    if calls is not None:
        return calls.deltas(chunk.text, chunk.finish_reason is not None)
    return [DeltaMessage(content=chunk.text)] if chunk.text or chunk.logprobs else []
