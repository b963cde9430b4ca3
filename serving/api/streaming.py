"""Async-stream plumbing for generation endpoints: priming, merging, closing, and Server-Sent Events."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator

import anyio
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from serving.api.errors import error_payload, ollama_error

logger = logging.getLogger(__name__)

_DONE = object()


async def close_stream(stream: Any) -> None:
    """aclose() an async iterator if it has one, shielded from cancellation so the model side always hears of it."""
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - closing is best effort; the request is over either way
            logger.warning("closing a generation stream failed", exc_info=True)


class PrimedStream:
    """An async iterator whose first item was fetched by `open`, so errors before it surface as plain exceptions."""

    def __init__(self, stream: AsyncIterator, first: Any, exhausted: bool):
        self._stream = stream
        self._first = first
        self._pending = not exhausted
        self._exhausted = exhausted

    @classmethod
    async def open(cls, stream: AsyncIterator) -> PrimedStream:
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            return cls(stream, None, exhausted=True)
        except BaseException:
            await close_stream(stream)
            raise
        return cls(stream, first, exhausted=False)

    def __aiter__(self) -> PrimedStream:
        return self

    async def __anext__(self) -> Any:
        if self._pending:
            self._pending = False
            return self._first
        if self._exhausted:
            raise StopAsyncIteration
        return await anext(self._stream)

    async def aclose(self) -> None:
        await close_stream(self._stream)


class MergedStream:
    """Interleaves primed streams as (source_index, item) in arrival order; aclose() stops and closes them all."""

    def __init__(self, streams: list[PrimedStream]):
        self._streams = streams
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._live = len(streams)

    @classmethod
    async def open(cls, streams: list[AsyncIterator]) -> MergedStream:
        """Prime all streams concurrently; if any fails before its first item, close the others and raise."""
        results = await asyncio.gather(*(PrimedStream.open(s) for s in streams), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            for result in results:
                if isinstance(result, PrimedStream):
                    await result.aclose()
            raise failure
        return cls(results)

    def __aiter__(self) -> MergedStream:
        return self

    async def __anext__(self) -> tuple[int, Any]:
        if len(self._streams) == 1:  # the common case needs no tasks
            return 0, await anext(self._streams[0])
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._pump(i, s)) for i, s in enumerate(self._streams)]
        while self._live:
            source, item, error = await self._queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                self._live -= 1
                continue
            return source, item
        raise StopAsyncIteration

    async def _pump(self, source: int, stream: PrimedStream) -> None:
        try:
            async for item in stream:
                await self._queue.put((source, item, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await self._queue.put((source, None, exc))
        else:
            await self._queue.put((source, _DONE, None))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for stream in self._streams:
            await stream.aclose()


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always aclose()s its body iterator, also when the client disconnects mid-stream."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await close_stream(self.body_iterator)


def sse_response(events: AsyncIterator[BaseModel], source: Any) -> StreamingResponse:
    """Stream `events` as `data: {json}` lines ending in `data: [DONE]`; `source` is closed however it ends."""
    return ClosingStreamingResponse(
        _sse_body(events, source),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse_body(events: AsyncIterator[BaseModel], source: Any) -> AsyncIterator[str]:
    """An error after the stream started becomes one `data: {"error": ...}` event, and the stream ends there."""
    try:
        async for event in events:
            yield f"data: {event.model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as exc:  # noqa: BLE001 - mapped (and logged when unknown) by error_payload
        _, body = error_payload(exc)
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        await close_stream(events)
        await close_stream(source)


def ndjson_response(lines: AsyncIterator[str], source: Any) -> StreamingResponse:
    """Stream JSON `lines` (each ending in a newline), Ollama's streaming format; `source` is closed however it
    ends."""
    return ClosingStreamingResponse(_ndjson_body(lines, source), media_type="application/x-ndjson")


async def _ndjson_body(lines: AsyncIterator[str], source: Any) -> AsyncIterator[str]:
    """An error after the stream started becomes one `{"error": "..."}` line (what Ollama's clients look for)."""
    try:
        async for line in lines:
            yield line
    except Exception as exc:  # noqa: BLE001 - mapped (and logged when unknown) by error_payload
        _, body = error_payload(exc)
        yield json.dumps(ollama_error(body)) + "\n"
    finally:
        await close_stream(lines)
        await close_stream(source)
