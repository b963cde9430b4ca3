"""DisconnectMiddleware: a client that leaves before its response starts cancels the request's handler.

Starlette cancels nothing when a client disconnects while a handler runs: a non-streaming completion (or a stream
still waiting for its first token) would go on generating for nobody, holding an engine slot. This middleware
watches for `http.disconnect` once the request body has been read and, if the response has not started, cancels
the handler; the cancellation closes the model call, which aborts the request in the engine. Once a response has
started it cancels nothing: a streaming response hears of the disconnect through `receive`, as before.
"""
from __future__ import annotations

import asyncio

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_DISCONNECT: Message = {"type": "http.disconnect"}


class DisconnectMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch = _Watch(receive, send)
        watcher = asyncio.create_task(watch.run())
        try:
            with anyio.CancelScope() as handler:  # a cancel by the watcher ends here, silently: nobody to answer
                watch.handler = handler
                await self.app(scope, watch.receive, watch.send)
        finally:
            watcher.cancel()


class _Watch:
    """Owns `receive` once the body is complete (the body passes through, then the disconnect is awaited here);
    `send` notes whether the response started."""

    def __init__(self, receive: Receive, send: Send):
        self._receive = receive
        self._send = send
        self._body_read = asyncio.Event()
        self._disconnected = asyncio.Event()
        self.response_started = False
        self.handler: anyio.CancelScope | None = None

    async def receive(self) -> Message:
        """The app's `receive`: the body as it comes, then (from the watcher) the disconnect."""
        if self._body_read.is_set():
            await self._disconnected.wait()
            return _DISCONNECT
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._disconnected.set()
        elif not message.get("more_body", False):
            self._body_read.set()
        return message

    async def send(self, message: Message) -> None:
        self.response_started = self.response_started or message["type"] == "http.response.start"
        await self._send(message)

    async def run(self) -> None:
        await self._body_read.wait()
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._disconnected.set()
        if not self.response_started and self.handler is not None:
            self.handler.cancel()
