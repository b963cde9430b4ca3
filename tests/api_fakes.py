"""In-process clients of the four tasks for the API tests (no Ray, no torch), and a router serving them.

Chat runs the real streaming service over the engine's own fake; the other tasks are deterministic fakes."""
from __future__ import annotations

import asyncio
import io
import threading
import wave
from dataclasses import dataclass, field

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from models.errors import ModelInputError
from models.llm.fake import FakeEngine, FakeTokenizer
from serving.api.app import build_app
from serving.clients import EmbeddingResult, EncodedAudio, GenerationRequest, ModelCard
from serving.router import ModelRouter, ServedModel
from serving.services.engine_core import LocalEngine
from serving.services.llm import LLMService

try:
    import httpx2 as openai_httpx  # openai >= 3 is built on httpx2 and refuses httpx clients
except ImportError:  # older openai releases use httpx itself
    openai_httpx = httpx

CHAT, EMBED, IMAGE, SPEECH = "fake/chat-model", "fake-embed", "fake-image", "fake-speech"
CREATED = 1_700_000_000


# --- chat: the real LLMService over the engine's own fake (one fake LLM family) ----------------------------------

TOKENIZER = FakeTokenizer()  # the engine fake's tokenizer: one token per character, ChatML specials
HELD_STEP_WAIT_S = 0.01  # while held, each empty step waits this long, so the engine thread still drains aborts


def chat_prompt_tokens(messages: list[dict]) -> int:
    """Prompt tokens the fake engine counts for these (already normalised) messages: their ChatML characters."""
    return len(TOKENIZER.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


class ControlledEngine:
    """models/llm/fake.py's FakeEngine with two test controls; everything else is the FakeEngine's own.

    hold_after(k): k more steps run, then steps produce nothing until release(), so a test knows a request is
    still unfinished when it acts. A prompt containing FAIL_MIDSTREAM makes the step after that request's
    second token raise, as a broken model would, so the service's mid-stream failure path runs.
    """

    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self._steps_left: int | None = None
        self._released = threading.Event()
        self._failing: dict[str, int] = {}  # request id -> tokens produced, for FAIL_MIDSTREAM prompts
        self._aborts = threading.Condition()

    def __getattr__(self, name: str):  # the rest of the engine's interface, whatever it grows to
        if name == "engine":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.engine, name)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params) -> None:
        self.engine.add_request(request_id, prompt_token_ids, params)
        if "FAIL_MIDSTREAM" in TOKENIZER.decode(list(prompt_token_ids)):
            self._failing[request_id] = 0

    def step(self) -> list:
        if self._steps_left == 0:
            self._released.wait(HELD_STEP_WAIT_S)
            return []
        if any(produced >= 2 for produced in self._failing.values()):
            raise RuntimeError("secret internal detail")
        if self._steps_left is not None:
            self._steps_left -= 1
        outputs = self.engine.step()
        for out in outputs:
            if out.request_id in self._failing:
                self._failing[out.request_id] += len(out.new_token_ids)
        return outputs

    def abort(self, request_id: str) -> None:
        self._failing.pop(request_id, None)
        with self._aborts:
            self.engine.abort(request_id)
            self._aborts.notify_all()

    def hold_after(self, steps: int) -> None:
        self._released.clear()
        self._steps_left = steps

    def release(self) -> None:
        self._steps_left = None
        self._released.set()

    def wait_aborted(self, count: int, timeout_s: float) -> bool:
        """Block until the engine has aborted `count` unfinished requests (False after `timeout_s`)."""
        with self._aborts:
            return self._aborts.wait_for(lambda: len(self.engine.aborted) >= count, timeout_s)


class FakeChatClient:
    """The ChatClient the API tests use: the real streaming service (serving/services/llm.py) over FakeEngine.

    The engine answers with the last user message (chat) or the prompt itself (completion), one character per
    token, then eos; with temperature > 0 it appends a number drawn from the seed. `context_size` is the engine's
    max_model_len; `delay` the engine's sleep per step (for benchmarks that need gaps between tokens). `requests`
    records every GenerationRequest; `aborted` the engine request ids ("<request id>-<choice>") aborted unfinished.
    The service's thread starts on the first request; close() stops it.
    """

    def __init__(self, context_size: int = 256, delay: float = 0.0):
        self.engine = ControlledEngine(FakeEngine(max_model_len=context_size, step_delay=delay))
        self.requests: list[GenerationRequest] = []
        self._service: LLMService | None = None

    @property
    def delay(self) -> float:
        return self.engine.step_delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self.engine.engine.step_delay = seconds

    @property
    def aborted(self) -> list[str]:
        return list(self.engine.aborted)

    async def generate(self, request: GenerationRequest):
        self.requests.append(request)
        if self._service is None:
            self._service = LLMService(lambda: LocalEngine(self.engine))
        stream = self._service.generate(request)
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    async def engine_stats(self) -> dict | None:
        """What HandleChatClient.engine_stats gives: the service's last report (None before its first request)."""
        return None if self._service is None else self._service.engine_stats()

    async def wait_aborted(self, count: int = 1, timeout_s: float = 10.0) -> list[str]:
        """The aborted ids once `count` requests were aborted; fails the test after `timeout_s`."""
        assert await asyncio.to_thread(self.engine.wait_aborted, count, timeout_s), self.aborted
        return self.aborted

    def close(self) -> None:
        self.engine.release()
        if self._service is not None:
            self._service.shutdown()


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

    def close(self) -> None:
        self.chat.close()

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


def asgi_scope(path: str, body: bytes, spec_version: str = "2.3") -> dict:
    """An HTTP POST scope of a JSON body, as a server would pass it."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000), "server": ("test", 80),
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }


async def leave_mid_stream(app, path: str, body: bytes, after: int = 3, spec_version: str = "2.3",
                           timeout_s: float = 5.0) -> list[bytes]:
    """Call `app` and hang up once `after` body messages arrived: by receive() (ASGI 2.3), and from 2.4 on by
    send() raising OSError as a server's does. Returns the body messages received."""
    request_sent, gone, bodies = False, asyncio.Event(), []

    async def receive():
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if gone.is_set() and spec_version == "2.4":
            raise OSError("connection lost")
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            if len(bodies) == after:
                gone.set()

    await asyncio.wait_for(app(asgi_scope(path, body, spec_version), receive, send), timeout=timeout_s)
    return bodies


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
def fakes():
    fakes = Fakes()
    yield fakes
    fakes.close()


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
