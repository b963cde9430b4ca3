"""A client that leaves frees its engine slot at every stage, through the real app and the real LLMService over the
fake engine (in process): during a non-streaming request, and before a stream's first token. Asserted from the
engine's own state, with deadlines."""
import asyncio
import json

import pytest

from models.llm.fake import FakeEngine
from serving.api.app import build_app
from serving.clients import ModelCard
from serving.router import ModelRouter, ServedModel
from serving.services.engine_core import LocalEngine
from serving.services.llm import LLMService
from tests.asgi_connection import AsgiConnection
from tests.waiting import wait_until

MODEL = "fake-chat"


@pytest.fixture
def engine():
    return FakeEngine(max_running=1, step_delay=0.002)  # one slot: a second request waits for it, with no token


@pytest.fixture
def app(engine):
    service = LLMService(lambda: LocalEngine(engine))
    yield build_app(ModelRouter([ServedModel(ModelCard(MODEL, "chat", 0), service)]))
    service.shutdown()


def connect(app, body: dict) -> AsgiConnection:
    """POST /v1/chat/completions with `body` to the app, as a task; `leave()` disconnects."""
    data = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]}
    connection = AsgiConnection([data])
    connection.task = asyncio.create_task(app(scope, connection.receive, connection.send))
    return connection


def long_chat(stream: bool) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "tell me everything"}], "max_tokens": 1500,
            "ignore_eos": True, "stream": stream}


async def test_leaving_a_non_streaming_request_aborts_it_in_the_engine(app, engine):
    client = connect(app, long_chat(stream=False))
    await wait_until(lambda: engine.num_unfinished_requests() == 1, what="the request to run")
    running = engine.unfinished_request_ids()
    client.leave()
    await wait_until(lambda: engine.num_unfinished_requests() == 0, what="the engine to drop the request")
    assert engine.aborted == running
    await asyncio.wait_for(client.task, 10)
    assert client.sent == []  # nobody to answer


async def test_leaving_a_stream_before_its_first_token_aborts_it_in_the_engine(app, engine):
    first = connect(app, long_chat(stream=True))  # holds the only slot
    await wait_until(lambda: any(m["type"] == "http.response.start" for m in first.sent), what="the first stream")
    second = connect(app, long_chat(stream=True))
    await wait_until(lambda: engine.num_unfinished_requests() == 2, what="the second request to queue")
    queued = engine.unfinished_request_ids()[1]
    second.leave()
    await wait_until(lambda: engine.num_unfinished_requests() == 1, what="the engine to drop the queued request")
    assert engine.aborted == [queued] and second.sent == []
    await asyncio.wait_for(second.task, 10)
    first.leave()  # a stream that started: Starlette's own disconnect handling ends it
    await wait_until(lambda: engine.num_unfinished_requests() == 0, what="the first stream's abort")
    await asyncio.wait_for(first.task, 10)
