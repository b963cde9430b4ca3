"""One HTTP connection as an ASGI server sees it, for tests that drive an app directly: the request body, then a
disconnect once the test calls `leave()`; what the app sends is kept in `sent`."""
from __future__ import annotations

import asyncio


class AsgiConnection:
    def __init__(self, chunks: list[bytes]):
        self.messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                         for i, c in enumerate(chunks)]
        self.sent: list[dict] = []
        self._left = asyncio.Event()

    def leave(self) -> None:
        self._left.set()

    async def receive(self) -> dict:
        if self.messages:
            return self.messages.pop(0)
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)
