"""POST /v1/completions: one or several prompts, text or token ids, streaming and not, echo and legacy logprobs."""
import json

import pytest

from tests.api_fakes import CHAT, app, assert_error, fakes, http, oai  # noqa: F401


def sse_events(text: str) -> list:
    return [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]


async def test_openai_client_single_prompt(oai, fakes):
    completion = await oai.completions.create(model=CHAT, prompt="hi there")
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [(0, "echo: hi there", "stop")]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)
    request = fakes.chat.requests[-1]
    assert request.prompt == "hi there" and request.messages is None
    assert request.params.max_tokens == 16  # OpenAI's default for this endpoint


async def test_several_prompts_times_n_index_as_prompt_i_times_n_plus_j(oai, fakes):
    completion = await oai.completions.create(model=CHAT, prompt=["a", "b c"], n=2, seed=7)
    assert [(c.index, c.text) for c in completion.choices] == [
        (0, "echo: a"), (1, "echo: a"), (2, "echo: b c"), (3, "echo: b c"),
    ]
    assert completion.usage.prompt_tokens == 3 and completion.usage.completion_tokens == 2 * 2 + 3 * 2
    ids = sorted(r.request_id for r in fakes.chat.requests)
    assert ids[0].endswith("-0") and ids[1].endswith("-1") and ids[0][:-2] == ids[1][:-2]
    assert {r.params.seed for r in fakes.chat.requests} == {7} and {r.n for r in fakes.chat.requests} == {2}


@pytest.mark.parametrize("prompt, texts", [
    ([5, 6, 7], ["tokens: 3"]),
    ([[1, 2], [3]], ["tokens: 2", "tokens: 1"]),
])
async def test_token_id_prompts(oai, fakes, prompt, texts):
    completion = await oai.completions.create(model=CHAT, prompt=prompt)
    assert [c.text for c in completion.choices] == texts
    assert fakes.chat.requests[0].prompt == (prompt if isinstance(prompt[0], int) else prompt[0])


async def test_streaming_with_usage(oai):
    stream = await oai.completions.create(
        model=CHAT, prompt=["x y", "z"], n=2, stream=True, stream_options={"include_usage": True}
    )
    texts, finishes, usage = {}, {}, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: "echo: x y", 1: "echo: x y", 2: "echo: z", 3: "echo: z"}
    assert finishes == {i: "stop" for i in range(4)}
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 10, 13)


async def test_legacy_logprobs(http):
    r = await http.post("/v1/completions", json={"model": CHAT, "prompt": "hi", "logprobs": 1})
    logprobs = r.json()["choices"][0]["logprobs"]
    assert logprobs == {
        "tokens": ["echo:", " hi"],
        "token_logprobs": [-0.5, -0.5],
        "top_logprobs": [{"echo:": -0.5}, {" hi": -0.5}],
        "text_offset": [0, 5],
    }


async def test_legacy_logprobs_streaming_offsets_continue(http):
    body = {"model": CHAT, "prompt": "hi you", "logprobs": 2, "stream": True}
    events = sse_events((await http.post("/v1/completions", json=body)).text)
    offsets = [o for e in events for c in e["choices"] for o in c["logprobs"]["text_offset"]]
    assert offsets == [0, 5, 8]
    assert events[0]["choices"][0]["logprobs"]["top_logprobs"] == [{"echo:": -0.5, "<alt>": -2.0}]


async def test_echo_prepends_the_prompt(http):
    r = await http.post("/v1/completions", json={"model": CHAT, "prompt": ["a", "b"], "echo": True})
    assert [c["text"] for c in r.json()["choices"]] == ["aecho: a", "becho: b"]
    body = {"model": CHAT, "prompt": "a", "echo": True, "stream": True}
    events = sse_events((await http.post("/v1/completions", json=body)).text)
    assert "".join(c["text"] for e in events for c in e["choices"]) == "aecho: a"


async def test_max_tokens_and_stop(http, fakes):
    r = await http.post("/v1/completions", json={"model": CHAT, "prompt": "one two three", "max_tokens": 2})
    assert r.json()["choices"][0] | {"logprobs": None} == {
        "index": 0, "text": "echo: one", "logprobs": None, "finish_reason": "length"
    }
    r = await http.post("/v1/completions", json={"model": CHAT, "prompt": "one two", "stop": [" two"]})
    assert (r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]) == ("echo: one", "stop")
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
    long_prompt = " ".join(["w"] * 60)  # 60 prompt tokens + 16 > the fake's 64-token context
    body = {"model": CHAT, "prompt": ["short", long_prompt], "stream": True}
    r = await http.post("/v1/completions", json=body)
    assert "context size" in assert_error(r, 400, param="max_tokens")
    assert len(fakes.chat.aborted) == 1 and fakes.chat.aborted[0].endswith("-0")
