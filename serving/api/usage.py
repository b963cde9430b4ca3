"""RequestRouter: the ModelRouter as one request sees it. Only the models its API key may use, and clients that
record the model and what the request used (tokens, images, characters) in its RequestInfo, for the access log,
the key's tokens-per-minute and the ingress' token metrics."""
from __future__ import annotations

from typing import AsyncIterator

from serving.api.context import RequestInfo
from serving.clients import EmbeddingResult, EncodedAudio, GenerationChunk, GenerationRequest, ModelCard
from serving.errors import ModelNotFoundError
from serving.metrics import definitions as m
from serving.router import ModelRouter

_EMBED_TOKENS = m.LabelCache(m.PROMPT_TOKENS)


class RequestRouter:
    def __init__(self, router: ModelRouter, info: RequestInfo):
        self.router = router
        self.info = info

    def cards(self) -> list[ModelCard]:
        key = self.info.key
        return [c for c in self.router.cards() if key is None or key.may_use(c.id)]

    def card(self, name: str) -> ModelCard:
        """The model's card; 404 model_not_found alike for an unknown model and one the key may not use (so a key
        learns nothing about models outside its allow-list), as OpenAI answers."""
        card = self.router.card(name)
        key = self.info.key
        if key is not None and not key.may_use(name, card.id):
            raise ModelNotFoundError(f"The model `{name}` does not exist.")
        return card

    def client(self, name: str, task: str):
        card = self.card(name)
        client = self.router.client(name, task)
        self.info.model = card.id
        return _COUNTING[task](client, self.info)


class _Chat:
    def __init__(self, client, info: RequestInfo):
        self.client, self.info = client, info

    async def tokenize(self, request: GenerationRequest, special: bool) -> list[int]:
        return await self.client.tokenize(request, special)

    async def detokenize(self, token_ids: list[int]) -> str:
        return await self.client.detokenize(token_ids)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Counts like the response's usage: the prompt once per request, completion tokens summed over choices."""
        prompt, completion = 0, {}
        try:
            async for chunk in self.client.generate(request):
                prompt = max(prompt, chunk.prompt_tokens)
                completion[chunk.index] = max(completion.get(chunk.index, 0), chunk.completion_tokens)
                yield chunk
        finally:
            self.info.prompt_tokens += prompt
            self.info.completion_tokens += sum(completion.values())


class _Embedding:
    def __init__(self, client, info: RequestInfo):
        self.client, self.info = client, info

    async def embed(self, inputs) -> EmbeddingResult:
        result = await self.client.embed(inputs)
        self.info.prompt_tokens += result.prompt_tokens
        _EMBED_TOKENS(self.info.model).inc(result.prompt_tokens)
        return result


class _Image:
    def __init__(self, client, info: RequestInfo):
        self.client, self.info = client, info

    async def generate(self, prompt: str, params, n: int) -> list[bytes]:
        images = await self.client.generate(prompt, params, n)
        self.info.images += len(images)
        m.IMAGES.labels(self.info.model).inc(len(images))
        return images


class _Speech:
    def __init__(self, client, info: RequestInfo):
        self.client, self.info = client, info

    async def synthesize(self, text: str, params, response_format: str) -> EncodedAudio:
        audio = await self.client.synthesize(text, params, response_format)
        self.info.characters += len(text)
        m.SPEECH_CHARACTERS.labels(self.info.model).inc(len(text))
        return audio


_COUNTING = {"chat": _Chat, "embedding": _Embedding, "image": _Image, "speech": _Speech}
