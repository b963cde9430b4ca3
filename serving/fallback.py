"""Fallbacks: while a model is unavailable (its circuit is open, it has no replica) or overloaded (its queue is
full), the next of its fallbacks that can answer does, before any byte of the reply has been sent.

Fallbacks are not transitive (a fallback's own fallbacks are not tried), so no chain can loop; one that is not
served now, or serves another task, is skipped. When none answers, the caller gets the model's own error."""
from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from serving.api.errors import as_serving_error
from serving.clients import EmbeddingResult, EncodedAudio, GenerationChunk, GenerationRequest
from serving.errors import ModelUnavailableError, ServerOverloadedError

log = logging.getLogger("serving.fallback")

FALLBACK_ERRORS = (ModelUnavailableError, ServerOverloadedError)  # the engine's overload is a ServerOverloadedError
Lookup = Callable[[str], Any]  # a fallback's client by name, or None when it cannot be used now


def falls_back(error: BaseException) -> bool:
    return isinstance(as_serving_error(error), FALLBACK_ERRORS)


class _Fallbacks:
    def __init__(self, primary: Any, names: tuple[str, ...], lookup: Lookup):
        self.primary = primary
        self.names = names
        self.lookup = lookup

    def candidates(self) -> list[tuple[str | None, Any]]:
        """(fallback name or None for the model itself, client), in order; unusable fallbacks left out."""
        found = [(None, self.primary)]
        for name in self.names:
            client = self.lookup(name)
            if client is not None:
                found.append((name, client))
        return found

    async def first(self, call: Callable[[Any], Awaitable[Any]]) -> Any:
        first_error: BaseException | None = None
        for name, client in self.candidates():
            try:
                return await call(client)
            except Exception as e:
                if not falls_back(e):
                    raise
                first_error = first_error or e
                log.info("falling back from %s: %s", name or "the model", as_serving_error(e))
        raise first_error


class FallbackChatClient(_Fallbacks):
    async def tokenize(self, request: GenerationRequest, special: bool) -> list[int]:
        """The model's own tokens: another model's would be of another vocabulary."""
        return await self.primary.tokenize(request, special)

    async def detokenize(self, token_ids: list[int]) -> str:
        return await self.primary.detokenize(token_ids)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """The first candidate whose stream starts (its first chunk arrives) answers the whole request."""
        first_error: BaseException | None = None
        for name, client in self.candidates():
            stream = client.generate(request)
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                return
            except Exception as e:
                await stream.aclose()
                if not falls_back(e):
                    raise
                first_error = first_error or e
                log.info("falling back from %s: %s", name or "the model", as_serving_error(e))
                continue
            try:
                yield first
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.aclose()
            return
        raise first_error


class FallbackEmbeddingClient(_Fallbacks):
    async def embed(self, inputs: list[str] | list[list[int]]) -> EmbeddingResult:
        return await self.first(lambda client: client.embed(inputs))


class FallbackImageClient(_Fallbacks):
    async def generate(self, prompt: str, params: Any, n: int) -> list[bytes]:
        return await self.first(lambda client: client.generate(prompt, params, n))


class FallbackSpeechClient(_Fallbacks):
    async def synthesize(self, text: str, params: Any, response_format: str) -> EncodedAudio:
        return await self.first(lambda client: client.synthesize(text, params, response_format))


FALLBACK_CLIENTS = {
    "chat": FallbackChatClient,
    "embedding": FallbackEmbeddingClient,
    "image": FallbackImageClient,
    "speech": FallbackSpeechClient,
}
