"""POST /v1/completions: one or several prompts, text or token ids, streaming and not, echo and legacy logprobs."""
import json
import math

import pytest

from tests.api_fakes import CHAT, TOKENIZER, app, assert_error, fakes, http, oai  # noqa: F401

LN2 = math.log(2)  # the fake engine's emitted token has logprob -ln 2, the next-ranked -2 ln 2 (models/llm/fake.py)


def sse_events(text: str) -> list:
    return [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]


async def test_openai_client_single_prompt(oai, fakes):
    completion = await oai.completions.create(model=CHAT, prompt="hi there", temperature=0)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    # The fake engine answers a prompt with itself, one token per character, then eos (counted, not shown).
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [(0, "hi there", "stop")]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (8, 9)
    request = fakes.chat.requests[-1]
    assert request.prompt == "hi there" and request.messages is None
    assert request.params.max_tokens == 16  # OpenAI's default for this endpoint


async def test_several_prompts_times_n_index_as_prompt_i_times_n_plus_j(oai, fakes):
    completion = await oai.completions.create(model=CHAT, prompt=["a", "b c"], n=2, seed=7, temperature=0)
    assert [(c.index, c.text) for c in completion.choices] == [(0, "a"), (1, "a"), (2, "b c"), (3, "b c")]
    assert completion.usage.prompt_tokens == 1 + 3 and completion.usage.completion_tokens == 2 * 2 + 4 * 2
    ids = sorted(r.request_id for r in fakes.chat.requests)
    assert ids[0].endswith("-0") and ids[1].endswith("-1") and ids[0][:-2] == ids[1][:-2]
    assert {r.params.seed for r in fakes.chat.requests} == {7} and {r.n for r in fakes.chat.requests} == {2}


@pytest.mark.parametrize("prompt, texts", [
    (TOKENIZER.encode("xyz"), ["xyz"]),
    ([TOKENIZER.encode("ab"), TOKENIZER.encode("c")], ["ab", "c"]),
])
async def test_token_id_prompts(oai, fakes, prompt, texts):
    completion = await oai.completions.create(model=CHAT, prompt=prompt, temperature=0)
    assert [c.text for c in completion.choices] == texts
    assert fakes.chat.requests[0].prompt == (prompt if isinstance(prompt[0], int) else prompt[0])


async def test_streaming_with_usage(oai):
    stream = await oai.completions.create(
        model=CHAT, prompt=["x y", "z"], n=2, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    texts, finishes, usage = {}, {}, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: "x y", 1: "x y", 2: "z", 3: "z"}
    assert finishes == {i: "stop" for i in range(4)}
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 12, 16)


async def test_legacy_logprobs(http):
    r = await http.post("/v1/completions", json={"model": CHAT, "prompt": "hi", "logprobs": 1, "temperature": 0})
    logprobs = r.json()["choices"][0]["logprobs"]
    eos = TOKENIZER.eos_token  # a token too, with no text: its offset is the text's end
    assert logprobs == {
        "tokens": ["h", "i", eos],
        "token_logprobs": [-LN2] * 3,
        "top_logprobs": [{"h": -LN2}, {"i": -LN2}, {eos: -LN2}],
        "text_offset": [0, 1, 2],
    }


async def test_legacy_logprobs_streaming_offsets_continue(http):
    body = {"model": CHAT, "prompt": "hi you", "logprobs": 2, "stream": True, "temperature": 0}
    events = sse_events((await http.post("/v1/completions", json=body)).text)
    offsets = [o for e in events for c in e["choices"] for o in c["logprobs"]["text_offset"]]
    assert offsets == [0, 1, 2, 3, 4, 5, 6]  # "hi you", then eos at the end
    assert events[0]["choices"][0]["logprobs"]["top_logprobs"] == [{"h": -LN2, "i": -2 * LN2}]


async def test_echo_prepends_the_prompt(http):
    r = await http.post("/v1/completions", json={"model": CHAT, "prompt": ["a", "b"], "echo": True, "temperature": 0})
    assert [c["text"] for c in r.json()["choices"]] == ["aa", "bb"]
    body = {"model": CHAT, "prompt": "ab", "echo": True, "stream": True, "temperature": 0}
    events = sse_events((await http.post("/v1/completions", json=body)).text)
    assert "".join(c["text"] for e in events for c in e["choices"]) == "abab"


async def test_max_tokens_and_stop(http, fakes):
    body = {"model": CHAT, "prompt": "one two three", "max_tokens": 2, "temperature": 0}
    r = await http.post("/v1/completions", json=body)
    assert r.json()["choices"][0] == {"index": 0, "text": "on", "logprobs": None, "finish_reason": "length"}
    body = {"model": CHAT, "prompt": "one two", "stop": [" two"], "temperature": 0}
    r = await http.post("/v1/completions", json=body)
    assert (r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]) == ("one", "stop")
    assert fakes.chat.requests[-1].params.stop == [" two"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ["a", ""]}, "prompt"),
    ({"prompt": {"a": 1}}, "prompt"),
    ({"prompt": "a", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "a", "logprobs": 21}, "logprobs"),
    ({"prompt": "a", "suffix": "tail"}, "suffix"),
    ({"prompt": "a", "best_of": 3}, "best_of"),
    ({"prompt": [1, 2], "echo": True}, "echo"),
    ({"prompt": "a", "echo": True, "logprobs": 1}, "echo"),
    ({}, "prompt"),
])
async def test_invalid_requests(http, body, param):
    assert_error(await http.post("/v1/completions", json={"model": CHAT, **body}), 400, param=param)


async def test_error_of_one_prompt_before_streaming_is_a_400_and_aborts_the_others(http, fakes):
    fakes.chat.engine.hold_after(1)  # "short" gets its first token (the stream opens), then cannot finish
    long_prompt = "w" * 250  # 250 prompt tokens + max_tokens 16 > the fake's 256-token context
    body = {"model": CHAT, "prompt": ["short", long_prompt], "stream": True}
    r = await http.post("/v1/completions", json=body)
    assert "maximum context length" in assert_error(r, 400, param="max_tokens")
    short = next(request for request in fakes.chat.requests if request.prompt == "short")
    assert await fakes.chat.wait_aborted(1) == [f"{short.request_id}-0"]
