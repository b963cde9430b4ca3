"""DisconnectMiddleware on toy ASGI apps: a client that leaves before the response starts cancels the handler;
after it started nothing is cancelled (the app hears the disconnect through receive)."""
import asyncio

from serving.api.disconnect import DisconnectMiddleware
from tests.asgi_connection import AsgiConnection

SCOPE = {"type": "http", "method": "POST", "path": "/", "headers": [], "asgi": {"version": "3.0"}}


async def read_body(receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    return body


async def test_a_client_leaving_before_the_response_cancels_the_handler():
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow_handler(scope, receive, send):
        assert await read_body(receive) == b"abc"
        started.set()
        try:
            await asyncio.Event().wait()  # a model call that would never end by itself
        except asyncio.CancelledError:
            cancelled.set()
            raise

    client = AsgiConnection([b"a", b"bc"])
    call = asyncio.create_task(DisconnectMiddleware(slow_handler)(SCOPE, client.receive, client.send))
    await asyncio.wait_for(started.wait(), 10)
    client.leave()
    await asyncio.wait_for(call, 10)  # returns (no exception): nobody is left to answer
    assert cancelled.is_set() and client.sent == []


async def test_after_the_response_started_the_app_hears_the_disconnect_and_is_not_cancelled():
    heard = asyncio.Event()

    async def streaming(scope, receive, send):
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        assert (await receive())["type"] == "http.disconnect"
        heard.set()

    client = AsgiConnection([b"{}"])
    call = asyncio.create_task(DisconnectMiddleware(streaming)(SCOPE, client.receive, client.send))
    await _until(lambda: client.sent)
    client.leave()
    await asyncio.wait_for(call, 10)
    assert heard.is_set() and [m["type"] for m in client.sent] == ["http.response.start"]


async def test_a_request_that_completes_is_answered_and_leaves_no_task_behind():
    async def echo(scope, receive, send):
        body = await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    client = AsgiConnection([b"x", b"y"])
    await asyncio.wait_for(DisconnectMiddleware(echo)(SCOPE, client.receive, client.send), 10)
    assert client.sent[-1]["body"] == b"xy"
    await _until(lambda: not [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "_Watch.run"])


async def _until(predicate, timeout_s: float = 10) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), timeout_s)
