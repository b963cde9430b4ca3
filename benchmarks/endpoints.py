"""One aiohttp request per OpenAI endpoint, timed the way metrics.py defines. Lean on purpose: the client shares the
machine's cores with the server, so it parses only what a metric needs."""
from __future__ import annotations

import asyncio
import io
import json
import time
import wave
from typing import Awaitable, Callable

import aiohttp

from benchmarks.metrics import RequestRecord

PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "images": "/v1/images/generations",
    "speech": "/v1/audio/speech",
}

SendFn = Callable[[aiohttp.ClientSession, str, dict], Awaitable[RequestRecord]]


def classify(error: BaseException) -> str:
    """An error kind for the report: timeout, connection, bad_response, or the exception's type."""
    if isinstance(error, asyncio.TimeoutError):
        return "timeout"
    if isinstance(error, aiohttp.ClientConnectionError):
        return "connection"
    if isinstance(error, (ValueError, KeyError, IndexError, TypeError, wave.Error)):
        return "bad_response"
    return f"exception:{type(error).__name__}"


async def _http_error(response: aiohttp.ClientResponse, record: RequestRecord) -> RequestRecord:
    record.error_kind = f"http_{response.status}"
    record.error = (await response.text())[:300]
    return record


def _guarded(send):
    """Turn any exception of `send` into a failed record (the run goes on and counts it by kind)."""

    async def wrapper(session: aiohttp.ClientSession, url: str, payload: dict, **options) -> RequestRecord:
        record = RequestRecord()
        started = time.perf_counter()
        try:
            await send(session, url, payload, record, started, **options)
        except Exception as e:  # noqa: BLE001 - every failure is a data point
            record.success, record.error_kind, record.error = False, classify(e), repr(e)[:300]
        if not record.success and not record.latency:
            record.latency = time.perf_counter() - started
        return record

    return wrapper


def _text_of(event: dict, endpoint: str) -> str | None:
    choices = event.get("choices")
    if not choices:
        return None
    if endpoint == "chat":
        return choices[0].get("delta", {}).get("content")
    return choices[0].get("text")


class _StreamClock:
    """Arrival times of text-carrying chunks: TTFT, ITL and E2EL follow from them."""

    def __init__(self, started: float):
        self.started = started
        self.last: float | None = None
        self.ttft: float | None = None
        self.itl: list[float] = []
        self.chunks = 0

    def text_arrived(self, now: float) -> None:
        if self.last is None:
            self.ttft = now - self.started
        else:
            self.itl.append(now - self.last)
        self.last, self.chunks = now, self.chunks + 1


async def _send_stream(session, url, payload, record: RequestRecord, started: float, endpoint: str) -> None:
    """Read Server-Sent Events line by line; an `error` event fails the request after the fact."""
    clock = _StreamClock(started)
    async with session.post(url, json=payload) as response:
        if response.status != 200:
            await _http_error(response, record)
            return
        async for raw in response.content:
            if not raw.startswith(b"data: ") or raw.startswith(b"data: [DONE]"):
                continue
            now = time.perf_counter()
            event = json.loads(raw[6:])
            if "error" in event:
                record.error_kind, record.error = "stream_error", str(event["error"])[:300]
                return
            if _text_of(event, endpoint):
                clock.text_arrived(now)
            if event.get("usage"):
                record.output_tokens = event["usage"].get("completion_tokens") or 0
                record.prompt_tokens = event["usage"].get("prompt_tokens") or 0
    if clock.last is None:
        record.error_kind, record.error = "bad_response", "no chunk carried text"
        return
    record.success, record.ttft, record.itl = True, clock.ttft, clock.itl
    record.latency = clock.last - started
    record.output_tokens = record.output_tokens or clock.chunks


async def _post_json(session, url, payload, record, started) -> dict | None:
    """POST, then the parsed JSON body with record.latency set; None (the error recorded) for a non-200."""
    async with session.post(url, json=payload) as response:
        if response.status != 200:
            await _http_error(response, record)
            return None
        body = await response.json(content_type=None)
    record.latency = time.perf_counter() - started
    return body


async def _send_generation(session, url, payload, record, started, endpoint: str) -> None:
    if payload.get("stream"):
        await _send_stream(session, url, payload, record, started, endpoint)
        return
    body = await _post_json(session, url, payload, record, started)
    if body is None:
        return
    record.output_tokens = body["usage"]["completion_tokens"]
    record.prompt_tokens = body["usage"]["prompt_tokens"]
    record.success = True


@_guarded
async def send_chat(session, url, payload, record, started) -> None:
    await _send_generation(session, url, payload, record, started, "chat")


@_guarded
async def send_completions(session, url, payload, record, started) -> None:
    await _send_generation(session, url, payload, record, started, "completions")


@_guarded
async def send_embeddings(session, url, payload, record, started) -> None:
    body = await _post_json(session, url, payload, record, started)
    if body is None:
        return
    record.items = len(body["data"])
    record.prompt_tokens = body.get("usage", {}).get("prompt_tokens", 0)
    expected = payload["input"]
    record.success = record.items == (len(expected) if isinstance(expected, list) else 1)
    if not record.success:
        record.error_kind, record.error = "bad_response", f"{record.items} vectors for {len(expected)} inputs"


@_guarded
async def send_images(session, url, payload, record, started) -> None:
    body = await _post_json(session, url, payload, record, started)
    if body is None:
        return
    record.items = len(body["data"])
    record.success = record.items == payload.get("n", 1)
    if not record.success:
        record.error_kind, record.error = "bad_response", f"{record.items} images for n={payload.get('n', 1)}"


def audio_seconds(data: bytes, response_format: str, pcm_sample_rate: int) -> float:
    """Duration of a WAV body (from its header) or of raw 16-bit mono PCM at `pcm_sample_rate`."""
    if response_format == "pcm":
        return len(data) / 2 / pcm_sample_rate
    if response_format != "wav":
        raise ValueError(f"audio duration is measured for wav and pcm only, not {response_format}")
    with wave.open(io.BytesIO(data)) as wav:
        return wav.getnframes() / wav.getframerate()


@_guarded
async def send_speech(session, url, payload, record, started, pcm_sample_rate: int = 22050) -> None:
    """TTFB at the first body chunk; audio seconds from the finished body (pcm needs the model's sample rate)."""
    chunks: list[bytes] = []
    async with session.post(url, json=payload) as response:
        if response.status != 200:
            await _http_error(response, record)
            return
        async for chunk in response.content.iter_any():
            if record.ttfb is None:
                record.ttfb = time.perf_counter() - started
            chunks.append(chunk)
    record.latency = time.perf_counter() - started
    fmt = payload.get("response_format", "mp3")
    record.audio_s = audio_seconds(b"".join(chunks), fmt, pcm_sample_rate)
    record.success = record.audio_s > 0
    if not record.success:
        record.error_kind, record.error = "bad_response", "no audio"


SENDERS: dict[str, SendFn] = {
    "chat": send_chat,
    "completions": send_completions,
    "embeddings": send_embeddings,
    "images": send_images,
    "speech": send_speech,
}
