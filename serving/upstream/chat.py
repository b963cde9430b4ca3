"""The chat client over an upstream: a GenerationRequest becomes a streamed /chat/completions (or /completions)
call, and the remote's server-sent events become GenerationChunks, as a local model's would."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import AsyncIterator

import aiohttp
from aiohttp.http_exceptions import LineTooLong

from models.llm.types import SamplingParams, TokenLogprob
from serving.clients import GenerationChunk, GenerationRequest
from serving.errors import InvalidRequestError, UpstreamError
from serving.metrics.models import observe_generation
from serving.upstream.transport import RemoteReply, UpstreamTransport

MAX_EVENT_BYTES = 1 << 20  # one server-sent event line; longer is a broken upstream

def sampling_fields(params: SamplingParams, chat: bool) -> dict:
    """OpenAI's request fields for `params`; extensions (top_k, ignore_eos, stop_token_ids) only when set, since
    OpenAI itself refuses fields it does not know."""
    body: dict = {"temperature": params.temperature, "top_p": params.top_p}
    optional = {
        "max_tokens": params.max_tokens, "seed": params.seed, "stop": params.stop or None,
        "presence_penalty": params.presence_penalty or None, "frequency_penalty": params.frequency_penalty or None,
        "top_k": params.top_k if params.top_k != -1 else None, "ignore_eos": params.ignore_eos or None,
        "stop_token_ids": params.stop_token_ids or None,
        "logit_bias": {str(t): v for t, v in params.logit_bias.items()} or None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if params.logprobs:
        body.update({"logprobs": True, "top_logprobs": params.top_logprobs} if chat else
                    {"logprobs": params.top_logprobs})
    return body


def request_body(request: GenerationRequest, remote_model: str) -> tuple[str, dict]:
    """(path, JSON body) of the streamed call that answers `request` on the remote."""
    chat = request.messages is not None
    body = {"model": remote_model, "stream": True, "stream_options": {"include_usage": True},
            **sampling_fields(request.params, chat)}
    if request.n != 1:
        body["n"] = request.n
    if chat:
        return "/chat/completions", {**body, "messages": request.messages}
    return "/completions", {**body, "prompt": request.prompt}


def _chat_logprobs(raw: dict | None) -> list[TokenLogprob] | None:
    if not raw or not raw.get("content"):
        return None
    return [TokenLogprob(-1, e["token"], e["logprob"], [(-1, t["token"], t["logprob"]) for t in e.get("top_logprobs") or []])
            for e in raw["content"]]


def _completion_logprobs(raw: dict | None) -> list[TokenLogprob] | None:
    if not raw or not raw.get("tokens"):
        return None
    tops = raw.get("top_logprobs") or [None] * len(raw["tokens"])
    return [TokenLogprob(-1, token, lp if lp is not None else 0.0, [(-1, t, v) for t, v in (top or {}).items()])
            for token, lp, top in zip(raw["tokens"], raw.get("token_logprobs") or [], tops)]


@dataclass
class ChunkAssembler:
    """Turns the remote's events into chunks. Content chunks pass at once; each choice's finishing chunk is held
    until the stream ends, when the remote's usage (in its last event) gives the token counts."""

    n: int
    chat: bool
    deltas: dict[int, int] = field(default_factory=dict)  # choice -> content events so far
    held: dict[int, GenerationChunk] = field(default_factory=dict)
    usage: dict | None = None

    def add(self, event: dict) -> list[GenerationChunk]:
        if event.get("usage"):
            self.usage = event["usage"]
        out = []
        for choice in event.get("choices") or []:
            index = int(choice.get("index", 0))
            if self.chat:
                text, logprobs = (choice.get("delta") or {}).get("content") or "", _chat_logprobs(choice.get("logprobs"))
            else:
                text, logprobs = choice.get("text") or "", _completion_logprobs(choice.get("logprobs"))
            if text or logprobs:
                self.deltas[index] = self.deltas.get(index, 0) + 1
            chunk = GenerationChunk(index, text, [], logprobs, choice.get("finish_reason"), 0, self.deltas.get(index, 0))
            if chunk.finish_reason:
                self.held[index] = chunk
            elif text or logprobs:
                out.append(chunk)
        return out

    def finish(self) -> list[GenerationChunk]:
        """The held finishing chunks, with the usage; UpstreamError if a choice never finished (a cut stream)."""
        missing = [i for i in range(self.n) if i not in self.held]
        if missing:
            raise UpstreamError("the upstream's stream ended before every choice finished", code="upstream_error")
        prompt = int((self.usage or {}).get("prompt_tokens", 0))
        counted = {i: self.deltas.get(i, 0) for i in range(self.n)}
        total = int((self.usage or {}).get("completion_tokens", sum(counted.values())))
        if self.n == 1:
            counted[0] = total
        else:  # the remote counts tokens over all choices: spread the difference over the last one
            counted[self.n - 1] = max(0, counted[self.n - 1] + total - sum(counted.values()))
        for i, chunk in self.held.items():
            chunk.prompt_tokens, chunk.completion_tokens = prompt, counted.get(i, 0)
        return [self.held[i] for i in sorted(self.held)]


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[dict]:
    """The JSON payloads of `data:` lines until `data: [DONE]` (or the end of the body)."""
    while True:
        try:
            line = await response.content.readline(max_line_length=MAX_EVENT_BYTES)
        except LineTooLong:
            raise UpstreamError("the upstream sent an over-long event line", code="upstream_error") from None
        if not line:
            return
        if not line.startswith(b"data:"):
            continue  # comments, blank separators, `event:` lines
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return
        event = json.loads(payload)
        if isinstance(event, dict) and "error" in event:  # an error after the stream started
            said = RemoteReply(json.dumps(event["error"])[:1000])
            raise UpstreamError("the upstream failed mid-stream", code="upstream_error") from said
        yield event


class UpstreamChatClient:
    """ChatClient over a remote server's /chat/completions and /completions, always streamed from the remote."""

    def __init__(self, transport: UpstreamTransport, remote_model: str):
        self.transport = transport
        self.remote_model = remote_model

    async def tokenize(self, request: GenerationRequest, special: bool) -> list[int]:
        raise InvalidRequestError("/tokenize is not available for upstream models.", param="model")

    async def detokenize(self, token_ids: list[int]) -> str:
        raise InvalidRequestError("/detokenize is not available for upstream models.", param="model")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """The chunks, counted as a local model's replica counts them (tokens, time to first token, finish
        reasons); the time runs from the ingress' call, the remote's network included. A grammar (response_format,
        a forced tool call) is refused: the remote would not enforce ours."""
        if request.grammar is not None:
            raise InvalidRequestError("response_format and forced tool calls (tool_choice required or a named "
                                      "function) are not supported for upstream models yet.",
                                      param="response_format")
        batches = observe_generation(self.transport.name, self._batches(request))
        try:
            async for batch in batches:
                for chunk in batch:
                    yield chunk
        finally:
            await batches.aclose()

    async def _batches(self, request: GenerationRequest) -> AsyncIterator[list[GenerationChunk]]:
        path, body = request_body(request, self.remote_model)
        assembler = ChunkAssembler(request.n, chat=request.messages is not None)
        async with self.transport.request("POST", path, body) as response:
            async for event in sse_events(response):
                chunks = assembler.add(event)
                if chunks:
                    yield chunks
            yield assembler.finish()
