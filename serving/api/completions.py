"""POST /v1/completions (legacy), streaming (SSE) and not; several prompts run concurrently."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Response

from models.llm.types import TokenLogprob
from serving.api.common import context_size, get_router, json_response
from serving.api.generation import UsageCounter, collect, open_generation
from serving.api.openapi import streamed
from serving.api.streaming import MergedStream, sse_response
from serving.clients import GenerationChunk
from serving.protocol.common import now, random_id
from serving.protocol.completions import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse
from serving.router import ModelRouter

router = APIRouter(tags=["completions"])


@dataclass
class _Response:
    """One response under construction: ids, the request, and per-choice text offsets (for logprobs)."""

    body: CompletionRequest
    id: str = field(default_factory=lambda: random_id("cmpl"))
    created: int = field(default_factory=now)
    offsets: dict[int, int] = field(default_factory=dict)

    def object(self, choices: list[CompletionChoice], **extra) -> CompletionResponse:
        return CompletionResponse(id=self.id, created=self.created, model=self.body.model, choices=choices, **extra)

    def choice(
        self, source: int, index: int, text: str, logprobs: list[TokenLogprob] | None, finish: str | None
    ) -> CompletionChoice:
        """A choice (or its delta): echo prepends the prompt to a choice's first text."""
        prefix = self.body.echo_text(source) if index not in self.offsets else ""
        start = self.offsets.get(index, 0) + len(prefix)
        self.offsets[index] = start + len(text)
        lps = None
        if self.body.logprobs is not None and logprobs is not None:
            lps = CompletionLogprobs.from_tokens(logprobs, self.body.logprobs, start)
        return CompletionChoice(index=index, text=prefix + text, logprobs=lps, finish_reason=finish)


@router.post("/v1/completions", response_model=CompletionResponse, responses=streamed("CompletionResponse"))
async def create_completion(body: CompletionRequest, models: ModelRouter = Depends(get_router)) -> Response:
    """Completions for each prompt, n each; with stream=true, text_completion events ending in [DONE]."""
    client = models.client(body.model, "chat")
    response = _Response(body)
    requests = body.to_generation_requests(response.id, context_size(models.card(body.model)))
    stream = await open_generation(client, requests)
    if body.stream:
        return sse_response(_chunks(stream, response), stream)
    choices, usage = await collect(stream, body.n)
    return json_response(
        response.object(
            [
                response.choice(i // body.n, i, state.text, state.logprobs, state.finish_reason)
                for i, state in choices
            ],
            usage=usage,
        )
    )


async def _chunks(stream: MergedStream, response: _Response) -> AsyncIterator[CompletionResponse]:
    """One event per engine chunk (text delta and, on the last, finish_reason), then usage if asked for."""
    usage = UsageCounter()
    n = response.body.n
    async for source, chunk in stream:
        usage.add(source, chunk)
        if _is_empty(chunk):
            continue
        index = source * n + chunk.index
        yield response.object([response.choice(source, index, chunk.text, chunk.logprobs, chunk.finish_reason)])
    if response.body.include_usage():
        yield response.object([], usage=usage.info())


def _is_empty(chunk: GenerationChunk) -> bool:
    return not (chunk.text or chunk.logprobs or chunk.finish_reason)
