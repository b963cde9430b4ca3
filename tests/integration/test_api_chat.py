"""POST /v1/chat/completions over the in-process app, with httpx and with the official openai client."""
import asyncio
import json
import math

import pytest

from serving.api.app import build_app
from tests.api_fakes import (  # noqa: F401
    CHAT, EMBED, TOKENIZER, app, assert_error, chat_prompt_tokens, fakes, http, leave_mid_stream, oai,
)

USER = [{"role": "user", "content": "hello there"}]
REPLY = "hello there"  # the fake engine answers with the last user message, greedily (temperature 0)
REPLY_TOKENS = len(REPLY) + 1  # one token per character, then eos (counted, not shown)
PROMPT_TOKENS = chat_prompt_tokens(USER)  # the ChatML characters of USER


def sse_events(text: str) -> list:
    """The data payloads of an SSE body, JSON-decoded except [DONE]."""
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


async def test_non_streaming_reply_and_usage(http, fakes):
    body = {"model": CHAT, "messages": USER, "temperature": 0, "some_extra_field": 1}
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == CHAT
    assert body["choices"] == [{
        "index": 0, "message": {"role": "assistant", "content": REPLY, "refusal": None},
        "logprobs": None, "finish_reason": "stop",
    }]
    assert body["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": REPLY_TOKENS,
                             "total_tokens": PROMPT_TOKENS + REPLY_TOKENS}
    request = fakes.chat.requests[-1]
    assert request.messages == USER and request.prompt is None and request.n == 1
    assert request.params.max_tokens is None  # no limit given: up to the context size


async def test_openai_client_non_streaming(oai):
    completion = await oai.chat.completions.create(model=CHAT, messages=USER, temperature=0)
    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == PROMPT_TOKENS + REPLY_TOKENS


async def test_openai_client_streaming_with_usage(oai):
    stream = await oai.chat.completions.create(
        model=CHAT, messages=USER, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == REPLY_TOKENS
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


async def test_streaming_raw_sse_format(http):
    r = await http.post("/v1/chat/completions", json={"model": CHAT, "messages": USER, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(e["usage"] is None for e in events[:-1])  # no include_usage: no usage chunk


async def test_n_choices_sample_with_consecutive_seeds(oai, fakes):
    completion = await oai.chat.completions.create(model=CHAT, messages=USER, n=3, seed=42)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    texts = [c.message.content for c in completion.choices]
    assert all(t.startswith(REPLY + " ") for t in texts) and len(set(texts)) == 3  # sampled: a seeded number
    assert completion.usage.completion_tokens == sum(len(t) + 1 for t in texts)
    assert completion.usage.prompt_tokens == PROMPT_TOKENS  # the prompt counts once, not once per choice
    request = fakes.chat.requests[-1]
    assert request.n == 3 and request.params.seed == 42  # the service gives choice i the seed 42 + i
    alone = await oai.chat.completions.create(model=CHAT, messages=USER, seed=43)
    assert alone.choices[0].message.content == texts[1]


async def test_n_choices_streaming(oai):
    stream = await oai.chat.completions.create(model=CHAT, messages=USER, n=2, temperature=0, stream=True)
    texts, finishes = {0: "", 1: ""}, {}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: REPLY, 1: REPLY}
    assert finishes == {0: "stop", 1: "stop"}


async def test_max_completion_tokens_wins_over_max_tokens(http, fakes):
    body = {"model": CHAT, "messages": USER, "temperature": 0, "max_tokens": 10, "max_completion_tokens": 2}
    r = await http.post("/v1/chat/completions", json=body)
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (REPLY[:2], "length")
    assert fakes.chat.requests[-1].params.max_tokens == 2


async def test_sampling_fields_map_onto_sampling_params(http, fakes):
    body = {
        "model": CHAT, "messages": USER, "stop": "there", "temperature": 0, "top_p": 0.5, "max_tokens": 20,
        "presence_penalty": 1.5, "frequency_penalty": -1, "seed": 3, "top_k": 5,
    }
    r = await http.post("/v1/chat/completions", json=body)
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("hello ", "stop")  # cut before the stop
    p = fakes.chat.requests[-1].params
    assert (p.stop, p.temperature, p.top_p, p.max_tokens, p.seed, p.top_k) == (["there"], 0.0, 0.5, 20, 3, 5)
    assert (p.presence_penalty, p.frequency_penalty, p.logprobs) == (1.5, -1.0, False)


async def test_logprobs_in_chat_format(oai):
    completion = await oai.chat.completions.create(model=CHAT, messages=USER, temperature=0, logprobs=True,
                                                   top_logprobs=2)
    content = completion.choices[0].logprobs.content
    # The fake engine gives the emitted token logprob -ln 2 and ranks the next ids after it (models/llm/fake.py).
    assert [t.token for t in content] == [*REPLY, TOKENIZER.eos_token]  # eos is a token too (no text)
    assert content[5].bytes == list(b" ") and content[5].logprob == -math.log(2)
    assert [(t.token, t.logprob) for t in content[0].top_logprobs] == [("h", -math.log(2)), ("i", -2 * math.log(2))]


async def test_message_content_parts_and_developer_role(http, fakes):
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]},
    ]
    r = await http.post("/v1/chat/completions", json={"model": CHAT, "messages": messages})
    assert r.status_code == 200
    assert fakes.chat.requests[-1].messages == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello\nworld"},
    ]


@pytest.mark.parametrize("extra, param", [
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"tool_choice": "required"}, "tool_choice"),  # without tools
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),  # the fake
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"top_logprobs": 2}, "top_logprobs"),  # needs logprobs=true
])
async def test_fields_that_would_change_meaning_are_refused(http, extra, param):
    r = await http.post("/v1/chat/completions", json={"model": CHAT, "messages": USER, **extra})
    assert_error(r, 400, param=param)


async def test_text_response_format_is_accepted(http):
    body = {"model": CHAT, "messages": USER, "response_format": {"type": "text"}}
    assert (await http.post("/v1/chat/completions", json=body)).status_code == 200


async def test_image_content_part_is_refused(http):
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    body = {"model": CHAT, "messages": [{"role": "user", "content": content}]}
    message = assert_error(await http.post("/v1/chat/completions", json=body), 400, param="messages[0].content")
    assert "image_url" in message and "text only" in message


@pytest.mark.parametrize("field, value, code", [
    ("temperature", 2.5, None), ("top_p", 0, None), ("n", 0, None), ("n", 17, None), ("top_logprobs", 21, None),
    ("presence_penalty", 3, None), ("max_completion_tokens", 0, None),
    ("stop", ["a", "b", "c", "d", "e"], "array_above_max_length"), ("stop", 5, None), ("seed", "abc", None),
])
async def test_out_of_range_fields(http, field, value, code):
    body = {"model": CHAT, "messages": USER, "logprobs": True, field: value}
    message = assert_error(await http.post("/v1/chat/completions", json=body), 400, param=field, code=code)
    assert message.startswith(f"{field}: ")


@pytest.mark.parametrize("stream", [False, True])
async def test_client_error_before_first_chunk_is_a_plain_400(http, stream):
    body = {"model": CHAT, "messages": USER, "max_tokens": 1000, "stream": stream}
    r = await http.post("/v1/chat/completions", json=body)
    assert r.headers["content-type"] == "application/json"
    assert "maximum context length" in assert_error(r, 400, param="max_tokens")


async def test_error_after_stream_started_is_an_error_event(http, fakes):
    body = {"model": CHAT, "messages": [{"role": "user", "content": "FAIL_MIDSTREAM"}], "stream": True}
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == {"error": {"message": "Generation failed in the model's engine; the server log has the "
                                               "details.", "type": "server_error", "param": None, "code": "model_error"}}
    assert len(events) > 2 and "secret" not in r.text and "[DONE]" not in r.text  # failed after its first tokens
    assert (await http.post("/v1/chat/completions", json={"model": CHAT, "messages": USER})).status_code == 200


async def test_openai_client_raises_on_error_event(oai):
    stream = await oai.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "FAIL_MIDSTREAM"}], stream=True
    )
    with pytest.raises(Exception, match="Generation failed"):
        async for _ in stream:
            pass


async def test_wrong_task_model(http):
    r = await http.post("/v1/chat/completions", json={"model": EMBED, "messages": USER})
    assert "/v1/embeddings" in assert_error(r, 400, param="model")


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])  # disconnect via receive(), or via send() raising OSError
async def test_client_disconnect_mid_stream_aborts_the_engine_request(fakes, spec_version):
    fakes.chat.engine.hold_after(5)  # the reply is longer: it cannot finish before the client goes
    app = build_app(fakes.router())
    text = "a reply far longer than five tokens"
    body = json.dumps({"model": CHAT, "messages": [{"role": "user", "content": text}], "stream": True}).encode()
    bodies = await leave_mid_stream(app, "/v1/chat/completions", body, spec_version=spec_version)
    assert await fakes.chat.wait_aborted(1) == [f"{fakes.chat.requests[-1].request_id}-0"]
    assert fakes.chat.requests[-1].request_id.startswith("chatcmpl-") and b"[DONE]" not in b"".join(bodies)
