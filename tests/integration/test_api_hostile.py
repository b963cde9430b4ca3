"""A hostile corpus against the in-process app over the fake backends: every value out of range, every list and
string far past its cap, malformed bodies. Each gets a 4xx with OpenAI's error body (never a 5xx, never a 422),
and the endpoint answers a normal request right after it. The caps are in serving/protocol/limits.py."""
from __future__ import annotations

import json

import pytest

from serving.api.app import build_app
from serving.clients import ModelCard
from serving.protocol import limits
from serving.router import ModelRouter, ServedModel
from tests.api_fakes import CHAT, EMBED, IMAGE, SPEECH, FakeChatClient, Fakes, asgi_client

MB = 2**20
USER = [{"role": "user", "content": "hi"}]
NORMAL = {
    "/v1/chat/completions": {"model": CHAT, "messages": USER},
    "/v1/completions": {"model": CHAT, "prompt": "hi"},
    "/v1/embeddings": {"model": EMBED, "input": "hi"},
    "/v1/images/generations": {"model": IMAGE, "prompt": "a red square"},
    "/v1/audio/speech": {"model": SPEECH, "input": "hi", "voice": "alloy", "response_format": "wav"},
}
TOO_LONG, TOO_MANY, BAD_TEXT = "string_above_max_length", "array_above_max_length", "invalid_unicode"
ANY = object()  # any code
CHAT_PATH, COMPLETIONS, EMBEDDINGS, IMAGES, SPEECH_PATH = NORMAL


def raw(path: str, fields: bytes) -> bytes:
    """A JSON body of the normal request with `fields` (raw JSON text, e.g. b'"temperature": NaN') added."""
    return json.dumps(NORMAL[path]).encode()[:-1] + b", " + fields + b"}"


def case(path: str, id_: str, status: int = 400, code=None, **fields):
    return pytest.param(path, NORMAL[path] | fields, status, code, id=f"{path.removeprefix('/v1/')}: {id_}")


def raw_case(path: str, id_: str, body: bytes, status: int = 400, code=None):
    return pytest.param(path, body, status, code, id=f"{path.removeprefix('/v1/')}: {id_}")


SAMPLING = [(path, [
    case(path, "seed 2**70", seed=2**70),
    case(path, "seed -2**70", seed=-(2**70)),
    case(path, "float seed", seed=1.5),
    case(path, "string seed", seed="abc"),
    case(path, "max_tokens 10**9", max_tokens=10**9),  # past the context: the model's own 400
    case(path, "max_tokens 10**30", max_tokens=10**30),
    case(path, "string temperature", temperature="hot"),
    case(path, "'NaN' temperature", temperature="NaN"),
    raw_case(path, "NaN temperature", raw(path, b'"temperature": NaN')),
    raw_case(path, "Infinity top_p", raw(path, b'"top_p": Infinity')),
    raw_case(path, "-Infinity presence_penalty", raw(path, b'"presence_penalty": -Infinity')),
    case(path, "1,000 stop strings", code=TOO_MANY, stop=["x"] * 1000),
    case(path, "1 MB stop string", code=TOO_LONG, stop="x" * MB),
    case(path, "100,000 stop_token_ids", code=TOO_MANY, stop_token_ids=[1] * 100_000),
    case(path, "negative stop_token_id", stop_token_ids=[-1]),
    case(path, "stop_token_id 2**40", stop_token_ids=[2**40]),
    case(path, "n 10**6", n=10**6),
    case(path, "top_k 2**40", top_k=2**40),
    case(path, "1 MB user", code=TOO_LONG, user="x" * MB),
    case(path, "100,000 logit_bias entries", code=TOO_MANY, logit_bias={str(i): 1 for i in range(100_000)}),
]) for path in (CHAT_PATH, COMPLETIONS)]

CASES = [c for _, cases in SAMPLING for c in cases] + [
    case(CHAT_PATH, "100,000 messages", code=TOO_MANY, messages=USER * 100_000),
    case(CHAT_PATH, "2 MB message", code=TOO_LONG, messages=[{"role": "user", "content": "x" * (2 * MB)}]),
    case(CHAT_PATH, "0.5 MB in each of 3 messages", code=TOO_LONG,
         messages=[{"role": "user", "content": "x" * (MB // 2)}] * 3),
    case(CHAT_PATH, "10,000 content parts", code=TOO_MANY,
         messages=[{"role": "user", "content": [{"type": "text", "text": "x"}] * 10_000}]),
    case(CHAT_PATH, "1 MB message name", code=TOO_LONG, messages=[{"role": "user", "content": "x", "name": "n" * MB}]),
    case(CHAT_PATH, "1 MB model name", code=TOO_LONG, model="m" * MB),
    case(CHAT_PATH, "100,000 tools", code=TOO_MANY, tools=[{"type": "function"}] * 100_000),
    case(CHAT_PATH, "logprobs x n x max_tokens", code="logprobs_too_large", logprobs=True, top_logprobs=20, n=16,
         max_tokens=1000),
    raw_case(CHAT_PATH, "lone surrogate", raw(CHAT_PATH, b'"user": "a\\ud800"'), code=BAD_TEXT),
    raw_case(CHAT_PATH, "lone surrogate in a message",
             b'{"model": "%s", "messages": [{"role": "user", "content": "\\udfff"}]}' % CHAT.encode(), code=BAD_TEXT),
    raw_case(CHAT_PATH, "invalid UTF-8", b'{"model": "%s", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}'
             % CHAT.encode(), code=ANY),
    raw_case(CHAT_PATH, "100,000-deep JSON", b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", code=ANY),
    raw_case(CHAT_PATH, "5,000-deep JSON in an ignored field", raw(CHAT_PATH, b'"x": ' + b"[" * 5000 + b"]" * 5000),
             code=ANY),
    raw_case(CHAT_PATH, "10 MB string", raw(CHAT_PATH, b'"user": "' + b"x" * (10 * MB) + b'"'), status=413),
    raw_case(CHAT_PATH, "truncated JSON", json.dumps(NORMAL[CHAT_PATH]).encode()[:-5], code="invalid_json"),
    case(COMPLETIONS, "2 MB prompt", code=TOO_LONG, prompt="x" * (2 * MB)),
    case(COMPLETIONS, "100,000 prompts", code=TOO_MANY, prompt=["x"] * 100_000),
    case(COMPLETIONS, "1,500,000 prompt token ids", code=TOO_LONG, prompt=[1] * 1_500_000),
    case(COMPLETIONS, "token id 2**40", prompt=[2**40]),
    case(COMPLETIONS, "negative token id", prompt=[[1, -5]]),
    case(COMPLETIONS, "64 prompts x n 16", code=TOO_MANY, prompt=["x"] * 64, n=16),
    case(COMPLETIONS, "2 MB suffix", code=TOO_LONG, suffix="x" * (2 * MB)),
    case(COMPLETIONS, "best_of 10**9", best_of=10**9),
    case(EMBEDDINGS, "2 MB input", code=TOO_LONG, input="x" * (2 * MB)),
    case(EMBEDDINGS, "100,000 inputs", code=TOO_MANY, input=["x"] * 100_000),
    case(EMBEDDINGS, "2,000 inputs of 1,000 characters", code=TOO_LONG, input=["x" * 1000] * 2000),
    case(EMBEDDINGS, "token id 10**30", input=[[10**30]]),
    case(EMBEDDINGS, "empty token list", input=[[1], []]),
    case(EMBEDDINGS, "dimensions 10**12", dimensions=10**12),
    case(EMBEDDINGS, "1 MB user", code=TOO_LONG, user="x" * MB),
    case(IMAGES, "size 100000x100000", size="100000x100000"),
    case(IMAGES, "size of other digits", size="²x8"),
    case(IMAGES, "1 MB size", code=TOO_LONG, size="8" * MB),
    case(IMAGES, "seed 2**70", seed=2**70),
    case(IMAGES, "negative seed past int64", seed=-(2**63) - 1),
    case(IMAGES, "n 10**6", n=10**6),
    case(IMAGES, "1 MB prompt", code=TOO_LONG, prompt="x" * MB),
    case(IMAGES, "1 MB negative_prompt", code=TOO_LONG, negative_prompt="x" * MB),
    case(IMAGES, "steps 10**9", num_inference_steps=10**9),
    raw_case(IMAGES, "NaN guidance_scale", raw(IMAGES, b'"guidance_scale": NaN')),
    case(SPEECH_PATH, "empty input", input=""),
    case(SPEECH_PATH, "1 MB input", code=TOO_LONG, input="x" * MB),
    case(SPEECH_PATH, "1 MB voice", code=TOO_LONG, voice="v" * MB),
    case(SPEECH_PATH, "1 MB voice id", code=TOO_LONG, voice={"id": "v" * MB}),
    case(SPEECH_PATH, "1 MB instructions", code=TOO_LONG, instructions="x" * MB),
    raw_case(SPEECH_PATH, "NaN speed", raw(SPEECH_PATH, b'"speed": NaN')),
    case(SPEECH_PATH, "speed 1e308", speed=1e308),
]


@pytest.fixture(scope="module")
def app():
    fakes = Fakes()
    yield build_app(fakes.router())
    fakes.close()


@pytest.fixture
async def http(app):
    async with asgi_client(app) as client:
        yield client


@pytest.mark.parametrize("path, body, status, code", CASES)
async def test_hostile_request_is_a_4xx_and_the_endpoint_still_serves(http, path, body, status, code):
    if isinstance(body, bytes):
        r = await http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = await http.post(path, json=body)
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert error["type"] == "invalid_request_error" and len(error["message"]) < 1000, error
    if code is not ANY:
        assert error["code"] == code, error
    normal = await http.post(path, json=NORMAL[path])
    assert normal.status_code == 200, normal.text[:500]


def test_the_corpus_passes_every_cap():
    """The corpus' sizes are past the caps they test, so a raised cap cannot make a case pass by accident."""
    assert 1000 > limits.MAX_STOP_SEQUENCES and MB > limits.MAX_STOP_CHARS and 100_000 > limits.MAX_MESSAGES
    assert 2 * MB > limits.MAX_TEXT_CHARS and 1_500_000 > limits.MAX_TEXT_CHARS and 2_000_000 > limits.MAX_TEXT_CHARS
    assert 100_000 > limits.MAX_EMBEDDING_INPUTS and 10_000 > limits.MAX_CONTENT_PARTS
    assert 64 * 16 > limits.MAX_SEQUENCES and 16 * 21 * 1000 > limits.MAX_LOGPROB_ENTRIES
    assert MB > limits.MAX_SPEECH_CHARS and MB > limits.MAX_IMAGE_PROMPT_CHARS and MB > limits.MAX_NAME_CHARS


@pytest.fixture
def with_context():
    """An app whose chat model's card states its context size (as the registry's cards do from max_model_len)."""

    built = []

    def build(context: int):
        fakes = Fakes(chat=FakeChatClient(context_size=context))
        built.append(fakes)
        router = ModelRouter([ServedModel(ModelCard(CHAT, "chat", 0, metadata={"max_model_len": context}), fakes.chat)])
        return fakes, asgi_client(build_app(router))

    yield build
    for fakes in built:
        fakes.close()


@pytest.mark.parametrize("path, body, param", [
    (CHAT_PATH, {"max_tokens": 64}, "max_tokens"),
    (CHAT_PATH, {"max_completion_tokens": 10**9}, "max_tokens"),
    (CHAT_PATH, {"messages": [{"role": "user", "content": "x" * (64 * limits.MAX_CHARS_PER_TOKEN + 1)}]}, "messages"),
    (COMPLETIONS, {"prompt": ["hi", "x" * (64 * limits.MAX_CHARS_PER_TOKEN + 1)]}, "prompt"),
    (COMPLETIONS, {"prompt": [1] * 64}, "prompt"),
])
async def test_what_cannot_fit_the_context_is_refused_before_the_model_sees_it(with_context, path, body, param):
    fakes, client = with_context(64)
    async with client as http:
        r = await http.post(path, json=NORMAL[path] | body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]
        assert r.json()["error"]["param"] == param and fakes.chat.requests == []
        fits = {"max_tokens": 8} if "max" in param else {}
        assert (await http.post(path, json=NORMAL[path] | fits)).status_code == 200 and fakes.chat.requests


async def test_logprobs_without_max_tokens_are_bounded_by_the_context(with_context):
    body = NORMAL[CHAT_PATH] | {"logprobs": True, "top_logprobs": 20, "n": 16}  # 16 x 21 x context entries
    _, client = with_context(2048)
    async with client as http:
        r = await http.post(CHAT_PATH, json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "logprobs_too_large", r.text[:300]
        assert (await http.post(CHAT_PATH, json=body | {"max_tokens": 700})).status_code == 200
