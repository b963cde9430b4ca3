"""Deterministic in-process fakes of the four client protocols (no Ray, no torch), and a router serving them."""
from __future__ import annotations

import asyncio
import io
import wave
from dataclasses import dataclass, field

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from models.errors import ModelInputError
from models.llm.types import TokenLogprob
from serving.api.app import build_app
from serving.clients import EmbeddingResult, EncodedAudio, GenerationChunk, GenerationRequest, ModelCard
from serving.errors import InvalidRequestError
from serving.router import ModelRouter, ServedModel

try:
    import httpx2 as openai_httpx  # openai >= 3 is built on httpx2 and refuses httpx clients
except ImportError:  # older openai releases use httpx itself
    openai_httpx = httpx

CHAT, EMBED, IMAGE, SPEECH = "fake/chat-model", "fake-embed", "fake-image", "fake-speech"
CREATED = 1_700_000_000


def reply_words(request: GenerationRequest) -> list[str]:
    """The fake's full reply: "You said: <last user message>" (chat) or "echo: <prompt>" (completion)."""
    if request.messages is not None:
        last = [m["content"] for m in request.messages if m["role"] == "user"][-1:] or [""]
        return ["You", "said:", *last[0].split()]
    if isinstance(request.prompt, list):
        return ["tokens:", str(len(request.prompt))]
    return ["echo:", *request.prompt.split()]


def prompt_tokens(request: GenerationRequest) -> int:
    if request.messages is not None:
        return sum(len(m["content"].split()) for m in request.messages)
    return len(request.prompt) if isinstance(request.prompt, list) else len(request.prompt.split())


def choice_deltas(request: GenerationRequest) -> tuple[list[str], str]:
    """Text deltas (one word = one token) after max_tokens and stop strings, and the finish reason."""
    words = reply_words(request)
    deltas = [w if i == 0 else " " + w for i, w in enumerate(words)]
    finish = "stop"
    if request.params.max_tokens is not None and len(deltas) > request.params.max_tokens:
        deltas, finish = deltas[: request.params.max_tokens], "length"
    text = "".join(deltas)
    cuts = [text.find(s) for s in request.params.stop if s in text]
    if not cuts:
        return deltas, finish
    kept, out = min(cuts), []
    for delta in deltas:
        out.append(delta[: max(0, kept)])
        kept -= len(delta)
        if kept <= 0:
            break
    return out, "stop"


@dataclass
class FakeChatClient:
    """Streams reply_words, one word per token, choices interleaved; "FAIL_MIDSTREAM" fails after the first words."""

    context_size: int = 64
    delay: float = 0.0
    requests: list[GenerationRequest] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)

    async def generate(self, request: GenerationRequest):
        self.requests.append(request)
        n_prompt = prompt_tokens(request)
        if request.params.max_tokens is not None and n_prompt + request.params.max_tokens > self.context_size:
            raise InvalidRequestError(
                f"prompt ({n_prompt} tokens) + max_tokens exceeds the context size {self.context_size}.",
                param="max_tokens",
            )
        finished = False
        try:
            async for chunk in self._chunks(request, n_prompt):
                yield chunk
            finished = True
        finally:
            if not finished:
                self.aborted.append(request.request_id)

    async def _chunks(self, request: GenerationRequest, n_prompt: int):
        deltas, finish = choice_deltas(request)
        fail = "FAIL_MIDSTREAM" in " ".join(reply_words(request))
        for step, delta in enumerate(deltas):
            for index in range(request.n):
                await asyncio.sleep(self.delay)
                last = step == len(deltas) - 1
                yield GenerationChunk(
                    index=index, text=delta, token_ids=[step], logprobs=self._logprobs(request, step, delta),
                    finish_reason=finish if last else None, prompt_tokens=n_prompt, completion_tokens=step + 1,
                )
            if fail:
                raise RuntimeError("secret internal detail")

    @staticmethod
    def _logprobs(request: GenerationRequest, step: int, delta: str) -> list[TokenLogprob] | None:
        if not request.params.logprobs:
            return None
        top = [(step, delta, -0.5), (999, "<alt>", -2.0)][: request.params.top_logprobs]
        return [TokenLogprob(token_id=step, token=delta, logprob=-0.5, top=top)]


def fake_vector(item: str | list[int], dims: int) -> np.ndarray:
    """Unit vector derived from the input's length, so tests can compute the expected value."""
    vec = np.arange(dims, dtype=np.float32) + len(item)
    return vec / np.linalg.norm(vec)


@dataclass
class FakeEmbeddingClient:
    dims: int = 8
    calls: list = field(default_factory=list)

    async def embed(self, inputs: list[str] | list[list[int]]) -> EmbeddingResult:
        self.calls.append(inputs)
        tokens = sum(len(i) if isinstance(i, list) else len(i.split()) for i in inputs)
        return EmbeddingResult(vectors=np.stack([fake_vector(i, self.dims) for i in inputs]), prompt_tokens=tokens)


@dataclass
class FakeImageClient:
    calls: list = field(default_factory=list)

    async def generate(self, prompt, params, n: int) -> list[bytes]:
        self.calls.append((prompt, params, n))
        return [_png(params.width, params.height, ((params.seed or 0) + i) % 256) for i in range(n)]


def _png(width: int, height: int, red: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (red, 0, 0)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class FakeSpeechClient:
    """WAV or raw PCM silence, 10 ms per character / speed; other formats and unknown voices are refused."""

    sample_rate: int = 16_000
    voices: tuple = ("alloy", "echo")
    calls: list = field(default_factory=list)

    async def synthesize(self, text: str, params, response_format: str) -> EncodedAudio:
        self.calls.append((text, params, response_format))
        if params.voice not in self.voices:
            raise ModelInputError(f"unknown voice '{params.voice}'", param="voice")
        if response_format not in ("wav", "pcm"):
            raise ModelInputError(f"response_format '{response_format}' is not supported; use wav or pcm",
                                  param="response_format")
        pcm = np.zeros(int(len(text) * self.sample_rate / 100 / params.speed), dtype="<i2").tobytes()
        if response_format == "pcm":
            return EncodedAudio(pcm, "audio/pcm")
        out = io.BytesIO()
        with wave.open(out, "wb") as wav:
            wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(self.sample_rate), wav.writeframes(pcm)
        return EncodedAudio(out.getvalue(), "audio/wav")


@dataclass
class Fakes:
    chat: FakeChatClient = field(default_factory=FakeChatClient)
    embed: FakeEmbeddingClient = field(default_factory=FakeEmbeddingClient)
    image: FakeImageClient = field(default_factory=FakeImageClient)
    speech: FakeSpeechClient = field(default_factory=FakeSpeechClient)

    def router(self) -> ModelRouter:
        """One model per task; the chat model's id contains a "/"."""
        image_meta = {"default_size": [64, 64], "default_steps": 2, "size_multiple": 8, "max_pixels": 512 * 512}
        return ModelRouter([
            ServedModel(ModelCard(CHAT, "chat", CREATED), self.chat),
            ServedModel(ModelCard(EMBED, "embedding", CREATED, metadata={"dimensions": self.embed.dims}), self.embed),
            ServedModel(ModelCard(IMAGE, "image", CREATED, metadata=image_meta), self.image),
            ServedModel(ModelCard(SPEECH, "speech", CREATED), self.speech),
        ])


# --- test plumbing: the app in-process, through httpx and through the official openai client ---------------------


def asgi_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def openai_client(app, api_key: str = "x") -> openai.AsyncOpenAI:
    http_client = openai_httpx.AsyncClient(transport=openai_httpx.ASGITransport(app=app), base_url="http://test")
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key=api_key, http_client=http_client, max_retries=0)


def assert_error(response, status: int, type_: str = "invalid_request_error", param=None, code=None) -> str:
    """The exact OpenAI error body shape; returns the message for further checks."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert (body["error"]["type"], body["error"]["param"], body["error"]["code"]) == (type_, param, code), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture
def app(fakes):
    return build_app(fakes.router())


@pytest.fixture
async def http(app):
    async with asgi_client(app) as client:
        yield client


@pytest.fixture
async def oai(app):
    async with openai_client(app) as client:
        yield client
