"""The Ollama API on the same port, over the same models, clients, keys and limits as the OpenAI API: /api/chat
and /api/generate (NDJSON streams, or one object with stream=false), /api/embed, /api/embeddings, /api/tags,
/api/show, /api/ps, /api/version. Errors are Ollama's {"error": "..."} (serving/api/errors.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import numpy as np
from fastapi import APIRouter, Depends, Response
from fastapi.responses import PlainTextResponse

from serving.api.common import context_size, get_router, json_response
from serving.api.generation import collect, open_generation
from serving.api.streaming import MergedStream, ndjson_response
from serving.clients import GenerationChunk, ModelCard
from serving.errors import ModelNotFoundError
from serving.protocol.common import random_id
from serving.protocol.ollama import (
    OLLAMA_API_VERSION, OLLAMA_TASKS, NEVER_EXPIRES, OllamaChatMessage, OllamaChatRequest, OllamaChatResponse,
    OllamaEmbeddingsRequest, OllamaEmbedRequest, OllamaEmbedResponse, OllamaGenerateRequest, OllamaGenerateResponse,
    OllamaResponse, OllamaShowRequest, listed_model, ollama_logprobs, show, timestamp,
)
from serving.router import ModelRouter

router = APIRouter(tags=["ollama"])


def _answers(model: type[OllamaResponse]) -> dict:
    """OpenAPI `responses` of a generation route: one object, or with stream (the default) NDJSON lines of them."""
    lines = {"schema": {"anyOf": [{"$ref": f"#/components/schemas/{model.__name__}"},
                                  {"$ref": "#/components/schemas/OllamaError"}]}}
    return {200: {"model": model, "content": {"application/x-ndjson": lines},
                  "description": f"one {model.__name__}, or with stream (the default) one per line, the last with "
                                 "done: true; an error after the first line is one OllamaError line"}}


def resolve(models: ModelRouter, name: str) -> ModelCard:
    """The model named `name`, or `name` without Ollama's default tag `:latest` (what /api/tags lists)."""
    try:
        return models.card(name)
    except ModelNotFoundError:
        if name.endswith(":latest"):
            try:
                return models.card(name.removesuffix(":latest"))
            except ModelNotFoundError:
                pass
    raise ModelNotFoundError(f'model "{name}" not found, try pulling it first')


@dataclass
class _Clock:
    """Ollama's durations (nanoseconds): from arrival to the first token (prompt) and on to the last (eval)."""

    started: int = field(default_factory=time.perf_counter_ns)
    first: int = 0

    def stats(self, prompt_tokens: int, completion_tokens: int) -> dict:
        end = time.perf_counter_ns()
        first = self.first or end
        return {"total_duration": end - self.started, "load_duration": 0, "prompt_eval_count": prompt_tokens,
                "prompt_eval_duration": first - self.started, "eval_count": completion_tokens,
                "eval_duration": end - first}


def _object(reply: OllamaResponse) -> Response:
    return Response(reply.json_line(), media_type="application/json")


Reply = Callable[..., OllamaResponse]  # (model, created_at, done, text, **fields) -> a chat or generate object


def _chat_reply(model: str, created_at: str, done: bool, text: str, **fields) -> OllamaResponse:
    return OllamaChatResponse(model=model, created_at=created_at, done=done,
                              message=OllamaChatMessage(content=text), **fields)


def _generate_reply(model: str, created_at: str, done: bool, text: str, **fields) -> OllamaResponse:
    return OllamaGenerateResponse(model=model, created_at=created_at, done=done, response=text, **fields)


async def _generation(models: ModelRouter, body: OllamaChatRequest | OllamaGenerateRequest, reply: Reply,
                      empty: bool) -> Response:
    """Run one generation and answer as a stream of objects or one object; `empty` (no messages, no prompt) only
    checks the model and answers `done_reason: load`, as Ollama does when asked to load a model."""
    card = resolve(models, body.model)
    client = models.client(card.id, "chat")
    if empty:
        return _object(reply(body.model, timestamp(), True, "", done_reason="load"))
    clock = _Clock()
    request = body.to_generation_request(random_id("ollama"), context_size(card))
    stream = await open_generation(client, [request])
    clock.first = time.perf_counter_ns()
    if body.stream:
        return ndjson_response(_lines(stream, body, reply, clock), stream)
    choices, usage = await collect(stream, 1)
    state = choices[0][1]
    return _object(reply(
        body.model, timestamp(), True, state.text, done_reason=state.finish_reason,
        logprobs=ollama_logprobs(state.logprobs) if body.logprobs else None,
        **clock.stats(usage.prompt_tokens, usage.completion_tokens),
    ))


async def _lines(stream: MergedStream, body: OllamaChatRequest | OllamaGenerateRequest, reply: Reply,
                 clock: _Clock) -> AsyncIterator[str]:
    """One object per delta, then a last one with done, done_reason and the counts."""
    last: GenerationChunk | None = None
    async for _, chunk in stream:
        last = chunk
        if chunk.text or chunk.logprobs:
            logprobs = ollama_logprobs(chunk.logprobs) if body.logprobs else None
            yield reply(body.model, timestamp(), False, chunk.text, logprobs=logprobs).json_line()
    prompt, completion = (last.prompt_tokens, last.completion_tokens) if last else (0, 0)
    done_reason = last.finish_reason if last else "stop"
    yield reply(body.model, timestamp(), True, "", done_reason=done_reason, **clock.stats(prompt, completion)).json_line()


@router.post("/api/chat", responses=_answers(OllamaChatResponse))
async def chat(body: OllamaChatRequest, models: ModelRouter = Depends(get_router)) -> Response:
    """A chat reply: NDJSON objects with message deltas ending in one with `done: true`, or one object."""
    return await _generation(models, body, _chat_reply, empty=not body.messages)


@router.post("/api/generate", responses=_answers(OllamaGenerateResponse))
async def generate(body: OllamaGenerateRequest, models: ModelRouter = Depends(get_router)) -> Response:
    """A completion of `prompt` (in the chat template, or raw): as /api/chat, with `response` deltas."""
    return await _generation(models, body, _generate_reply, empty=not body.prompt)


@router.post("/api/embed", response_model=OllamaEmbedResponse)
async def embed(body: OllamaEmbedRequest, models: ModelRouter = Depends(get_router)) -> Response:
    """Unit-length vectors, one per input."""
    card = resolve(models, body.model)
    client = models.client(card.id, "embedding")
    inputs = body.inputs()
    started = time.perf_counter_ns()
    if not inputs:
        return json_response(OllamaEmbedResponse(model=body.model, embeddings=[], total_duration=0,
                                                 prompt_eval_count=0))
    result = await client.embed(inputs)
    vectors = np.asarray(result.vectors, dtype=np.float32)
    if body.dimensions is not None and body.dimensions < vectors.shape[1]:  # Ollama truncates, then normalizes
        vectors = vectors[:, : body.dimensions]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1.0, norms)
    return json_response(OllamaEmbedResponse(
        model=body.model, embeddings=vectors.tolist(), total_duration=time.perf_counter_ns() - started,
        prompt_eval_count=result.prompt_tokens,
    ))


@router.post("/api/embeddings")
async def embeddings(body: OllamaEmbeddingsRequest, models: ModelRouter = Depends(get_router)) -> dict:
    """The older route: one prompt's vector as the model gives it; an empty prompt gets an empty vector."""
    card = resolve(models, body.model)
    client = models.client(card.id, "embedding")
    if not body.prompt:
        return {"embedding": []}
    result = await client.embed([body.prompt])
    return {"embedding": np.asarray(result.vectors[0], dtype=np.float32).tolist()}


@router.get("/api/tags")
async def tags(models: ModelRouter = Depends(get_router)) -> dict:
    """The chat and embedding models, by their Ollama names (`<id>:latest` for an id without a tag)."""
    return {"models": [listed_model(c) for c in models.cards() if c.task in OLLAMA_TASKS]}


@router.get("/api/ps")
async def ps(models: ModelRouter = Depends(get_router)) -> dict:
    """The same models: every served model is loaded (none expires, no memory figure is known here)."""
    return {"models": [{**listed_model(c), "expires_at": NEVER_EXPIRES, "size_vram": 0}
                       for c in models.cards() if c.task in OLLAMA_TASKS]}


@router.post("/api/show")
async def show_model(body: OllamaShowRequest, models: ModelRouter = Depends(get_router)) -> dict:
    return show(resolve(models, body.model_name()))


@router.get("/api/version")
async def version() -> dict:
    return {"version": OLLAMA_API_VERSION}


@router.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse, include_in_schema=False)
async def root() -> str:
    """What Ollama answers at its root: tools probe it to find an Ollama server."""
    return "Ollama is running"
