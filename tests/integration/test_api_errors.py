"""Every failure is an OpenAI error body with the right status, and the app keeps serving afterwards."""
import json

import pytest

from models.errors import EngineOverloadedError, ModelInputError
from serving.api.app import build_app
from serving.clients import GenerationChunk, ModelCard
from serving.errors import DeadlineExceededError, ModelUnavailableError, ServerOverloadedError
from serving.router import ModelRouter, ServedModel
from tests.api_fakes import CHAT, EMBED, IMAGE, asgi_client, assert_error, fakes  # noqa: F401

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def app(fakes):
    return build_app(fakes.router(), max_request_bytes=1000)


@pytest.fixture
async def http(app):
    async with asgi_client(app) as client:
        yield client


async def still_serves(http) -> None:
    r = await http.post("/v1/chat/completions", json={"model": CHAT, "messages": USER, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hi"


@pytest.mark.parametrize("body, param, message", [
    ({"messages": USER}, "model", "model: Field required"),
    ({"model": CHAT}, "messages", "messages: Field required"),
    ({"model": CHAT, "messages": []}, "messages", "messages: List should have at least 1 item"),
    ({"model": CHAT, "messages": "hi"}, "messages", "messages: Input should be a valid list"),
    ({"model": CHAT, "messages": [{"content": "hi"}]}, "messages[0].role", "messages[0].role: Field required"),
    ({"model": CHAT, "messages": [{"role": "function", "content": "x"}]}, "messages[0].role", "messages[0].role: "),
    ({"model": CHAT, "messages": USER, "max_tokens": -5}, "max_tokens", "max_tokens: Input should be greater"),
    ({"model": CHAT, "messages": USER, "max_tokens": "many"}, "max_tokens", "max_tokens: Input should be a valid"),
    ({"model": CHAT, "messages": USER, "temperature": "hot"}, "temperature", "temperature: Input should be"),
    ({"model": CHAT, "messages": USER, "stream": "yes please"}, "stream", "stream: Input should be a valid bool"),
])
async def test_validation_errors_are_400_naming_the_field(http, body, param, message):
    r = await http.post("/v1/chat/completions", json=body)
    assert assert_error(r, 400, param=param).startswith(message)
    await still_serves(http)


async def test_unknown_model_is_404_model_not_found(http):
    r = await http.post("/v1/chat/completions", json={"model": "no-such-model", "messages": USER})
    assert "no-such-model" in assert_error(r, 404, param="model", code="model_not_found")
    await still_serves(http)


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"model": EMBED, "messages": USER}),
    ("/v1/completions", {"model": IMAGE, "prompt": "x"}),
    ("/v1/embeddings", {"model": CHAT, "input": "x"}),
    ("/v1/images/generations", {"model": CHAT, "prompt": "x"}),
    ("/v1/audio/speech", {"model": CHAT, "input": "x", "voice": "alloy"}),
])
async def test_model_of_another_task_is_400(http, path, body):
    assert_error(await http.post(path, json=body), 400, param="model")
    await still_serves(http)


@pytest.mark.parametrize("content", [b"{not json", b'{"model": "x",}', b"\xff\xfe"])
async def test_invalid_json_is_400(http, content):
    r = await http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert "Invalid JSON" in assert_error(r, 400, code="invalid_json")
    await still_serves(http)


async def test_non_object_body_is_400(http):
    r = await http.post("/v1/chat/completions", json=[1, 2])
    assert "JSON object" in assert_error(r, 400)


async def test_oversized_body_by_content_length_is_413(http):
    big = {"model": CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    assert "1000 bytes" in assert_error(await http.post("/v1/chat/completions", json=big), 413)
    await still_serves(http)


async def test_oversized_chunked_body_is_413(http):
    async def chunks():  # no Content-Length: the limit must count what actually arrives
        yield b'{"model": "' + CHAT.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 100
        yield b'"}]}'

    r = await http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413)
    await still_serves(http)


async def test_bad_image_size_is_400(http):
    r = await http.post("/v1/images/generations", json={"model": IMAGE, "prompt": "x", "size": "huge"})
    assert_error(r, 400, param="size")


async def test_unknown_route_and_wrong_method(http):
    assert assert_error(await http.post("/v1/nothing", json={}), 404) == "Invalid URL (POST /v1/nothing)"
    r = await http.get("/v1/chat/completions")
    assert_error(r, 405) and r.headers["allow"] == "POST"
    await still_serves(http)


async def test_unexpected_exception_is_a_500_without_internals(http, fakes, caplog):
    async def broken(inputs):
        raise RuntimeError("secret database password")

    fakes.embed.embed = broken
    r = await http.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
    assert assert_error(r, 500, type_="server_error") == "internal error"
    assert "secret" not in r.text and "secret database password" in caplog.text  # logged with its traceback
    await still_serves(http)


async def test_typed_errors_from_clients_keep_their_status(http, fakes):
    async def overloaded(inputs):
        raise ServerOverloadedError("too many requests queued", code="overloaded")

    fakes.embed.embed = overloaded
    r = await http.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
    assert assert_error(r, 429, type_="rate_limit_error", code="overloaded") == "too many requests queued"
    assert r.headers["retry-after"] == "1"


@pytest.mark.parametrize("error, status, type_, retry_after", [
    (EngineOverloadedError("the model is at capacity"), 429, "rate_limit_error", "1"),
    (ModelUnavailableError("the engine is restarting", retry_after=2.5), 503, "server_error", "3"),
    (DeadlineExceededError("no answer within 30 s"), 504, "server_error", "5"),
])
async def test_retryable_errors_carry_retry_after(http, fakes, error, status, type_, retry_after):
    async def fail(inputs):
        raise error

    fakes.embed.embed = fail
    r = await http.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
    assert assert_error(r, status, type_=type_) == str(error)
    assert r.headers["retry-after"] == retry_after


async def test_model_input_error_is_400_with_its_param(http, fakes):
    async def refuse(inputs):
        raise ModelInputError("input too long for this model", param="input")

    fakes.embed.embed = refuse
    r = await http.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
    assert assert_error(r, 400, param="input") == "input too long for this model"


class FailingHandle:
    """A Serve deployment handle whose every call fails as Ray fails it: its response raises a RayTaskError
    carrying the replica's exception in `.cause` (and, as Ray raises it, an instance of the cause's class too)."""

    def __init__(self, error: BaseException):
        self.error = error

    def options(self, **_):
        return self

    def __getattr__(self, method: str):
        return self

    def remote(self, *args, **kwargs):
        return FailedResponse(self.error)


class FailedResponse:
    """A DeploymentResponse (as the handle clients use it) whose replica took the call and raised `error`."""

    def __init__(self, error: BaseException):
        self.error = error

    async def _fetch_future_result_async(self) -> None:
        from ray.exceptions import RayTaskError

        raise RayTaskError("embed", "traceback", self.error).as_instanceof_cause()

    def cancel(self) -> None:
        pass


@pytest.fixture
def failing_embed():
    """An app whose embedding model is reached through the real Ray boundary client over a FailingHandle."""
    from serving.deployments.handle_clients import Deadlines, HandleEmbeddingClient

    def build(error: BaseException):
        client = HandleEmbeddingClient(FailingHandle(error), Deadlines(queue_s=10, request_s=10))
        served = ServedModel(ModelCard(EMBED, "embedding", 0), client)
        return asgi_client(build_app(ModelRouter([served])))

    return build


@pytest.mark.parametrize("cause, status, param, retry_after", [
    (ModelInputError("bad voice", param="voice"), 400, "voice", None),
    (ServerOverloadedError("busy"), 429, None, "1"),
    (EngineOverloadedError("the model is at capacity"), 429, None, "1"),
    (ModelUnavailableError("the engine is restarting"), 503, None, "5"),
])
async def test_errors_raised_in_a_replica_keep_their_status_through_ray(failing_embed, cause, status, param,
                                                                       retry_after):
    async with failing_embed(cause) as http:
        r = await http.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
    assert r.status_code == status and r.json()["error"]["param"] == param
    assert r.json()["error"]["message"] == str(cause) and r.headers.get("retry-after") == retry_after


async def test_an_untyped_error_in_a_replica_is_a_500_without_internals(failing_embed, caplog):
    async with failing_embed(RuntimeError("secret replica detail")) as http:
        r = await http.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
    assert assert_error(r, 500, type_="server_error") == "internal error" and "secret" not in r.text


@pytest.mark.parametrize("error, type_, param", [
    (ModelUnavailableError("the engine is restarting"), "server_error", None),
    (ModelInputError("this token cannot be decoded", param="messages"), "invalid_request_error", "messages"),
    (EngineOverloadedError("the model is at capacity"), "rate_limit_error", None),
])
async def test_a_typed_error_after_the_first_event_ends_the_stream_with_its_body(http, fakes, error, type_, param):
    async def generate(request):
        yield GenerationChunk(index=0, text="Hel", token_ids=[1], logprobs=None, finish_reason=None,
                              prompt_tokens=1, completion_tokens=1)
        raise error

    fakes.chat.generate = generate
    r = await http.post("/v1/chat/completions", json={"model": CHAT, "messages": USER, "stream": True})
    assert r.status_code == 200 and "[DONE]" not in r.text
    last = json.loads(r.text.strip().split("\n\n")[-1].removeprefix("data: "))
    assert last == {"error": {"message": str(error), "type": type_, "param": param, "code": None}}
