"""A real HTTP upstream in the test's own event loop: uvicorn serving the real OpenAI app over the API fakes, behind
an ASGI layer that injects faults (a status, a hang, a slow first byte, a stream cut in the middle). Stopping it
makes connections to its port refused; starting it again on the same port is the upstream's recovery."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.app import build_app
from tests.api_fakes import Fakes
from tests.e2e.server_process import free_port


@dataclass
class Faults:
    """What the upstream does to the next calls (not to GET /v1/models unless `health` too)."""

    mode: str = "ok"  # ok | status | hang | slow | cut
    status: int = 500
    delay_s: float = 0.0  # slow: before the first byte
    cut_after: int = 2  # cut: body messages sent before the connection drops
    health: bool = False  # also fault the health checks' GET /v1/models
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends every hang
    calls: list[str] = field(default_factory=list)  # the paths of every request that arrived
    authorizations: list[str | None] = field(default_factory=list)  # their Authorization headers


class FaultyApp:
    def __init__(self, app: ASGIApp, faults: Faults):
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        f = self.faults
        f.calls.append(scope["path"])
        auth = dict(scope["headers"]).get(b"authorization")
        f.authorizations.append(None if auth is None else auth.decode())
        if f.mode == "ok" or (scope["path"].endswith("/models") and not f.health):
            await self.app(scope, receive, send)
        elif f.mode == "status":
            body = b'{"error": {"message": "injected failure", "type": "server_error"}}'
            await send({"type": "http.response.start", "status": f.status,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"7")]})
            await send({"type": "http.response.body", "body": body})
        elif f.mode == "hang":
            await f.release.wait()
        elif f.mode == "slow":
            await asyncio.sleep(f.delay_s)  # the fault itself: the first byte comes this late
            await self.app(scope, receive, send)
        elif f.mode == "cut":
            await self.app(scope, receive, _cutting(send, f.cut_after))


def _cutting(send: Send, after: int) -> Send:
    """A send that forwards the response start and `after` body messages, then fails: uvicorn drops the
    connection in the middle of the body."""
    sent = 0

    async def cut(message: Message) -> None:
        nonlocal sent
        if message["type"] == "http.response.body":
            if sent == after:
                raise ConnectionResetError("injected: stream cut")
            sent += 1
        await send(message)

    return cut


class Upstream:
    """The fault-injecting upstream on 127.0.0.1:<port>/v1; `await start()` / `await stop()`."""

    def __init__(self, fakes: Fakes | None = None):
        self.fakes = fakes or Fakes()
        self.faults = Faults()
        self.app = FaultyApp(build_app(self.fakes.router()), self.faults)
        self.port = free_port()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, timeout_s: float = 10.0) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            assert time.monotonic() < deadline and not self._task.done(), "the upstream did not start"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop listening (new connections are refused) and close the open ones."""
        if self._server is None:
            return
        self.faults.release.set()
        self._server.should_exit = True
        await asyncio.wait_for(self._task, 10)
        self._server = None

    async def close(self) -> None:
        await self.stop()
        self.fakes.close()


@pytest.fixture
async def upstream():
    """A running fault-injecting upstream, closed after the test."""
    up = Upstream()
    await up.start()
    yield up
    await up.close()
