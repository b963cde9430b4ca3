"""Tools, response_format and logit_bias on /v1/chat/completions over the fake engine: the request checks (400s
with OpenAI's body), the generic tool template, and reading `auto` tool calls (the fake answers with the last user
message, so a test writes the model's output)."""
import json

import pytest

from tests.api_fakes import CHAT, FakeChatClient, Fakes, app, assert_error, http, oai  # noqa: F401

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALL_TEXT = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture
def fakes():
    """The fakes with a context that fits the generic template's tool listing (one token per character)."""
    fakes = Fakes(chat=FakeChatClient(context_size=4096))
    yield fakes
    fakes.close()


def ask(content: str, **extra) -> dict:
    return {"model": CHAT, "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


@pytest.mark.parametrize("extra, param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),  # no tools
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "wat"}}}]},
     "tools[0].function.parameters"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_object"}, "tools": [WEATHER]}, "response_format"),
    ({"logit_bias": {"5": -100.5}}, "logit_bias"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),  # outside the vocabulary: the engine's check
])
async def test_bad_tool_and_format_requests_are_400_naming_the_field(http, extra, param):
    r = await http.post("/v1/chat/completions", json=ask("hi", **extra))
    assert_error(r, 400, param=param)


async def test_logit_bias_in_range_reaches_the_engine_as_token_ids(http, fakes):
    r = await http.post("/v1/chat/completions", json=ask("hi", logit_bias={"5": 100, "7": -100}))
    assert r.status_code == 200, r.text
    assert fakes.chat.requests[-1].params.logit_bias == {5: 100.0, 7: -100.0}
    r = await http.post("/v1/completions", json={"model": CHAT, "prompt": "hi", "logit_bias": {"6": 1.5}})
    assert r.status_code == 200 and fakes.chat.requests[-1].params.logit_bias == {6: 1.5}


async def test_tools_and_tool_messages_go_through_the_generic_template(http, fakes):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ]
    r = await http.post("/v1/chat/completions", json={"model": CHAT, "messages": messages, "tools": [WEATHER]})
    assert r.status_code == 200, r.text
    sent = fakes.chat.requests[-1].messages
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"].startswith("be brief\n\n") and '"name": "get_weather"' in sent[0]["content"]
    assert sent[2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert sent[3]["content"] == "<tool_response>\ncold\n</tool_response>"
    assert fakes.chat.requests[-1].grammar is None  # auto: the model chooses, nothing is forced


async def test_auto_reads_hermes_tool_calls(oai):
    r = await oai.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": CALL_TEXT}],
                                          tools=[WEATHER], temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call") and call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})


async def test_auto_streams_content_then_the_call(oai):
    stream = await oai.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": CALL_TEXT}],
                                               tools=[WEATHER], temperature=0, stream=True)
    content, calls, finish = "", [], None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        calls += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert content == "Let me check." and finish == "tool_calls"
    (call,) = calls
    assert call.index == 0 and call.id and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_without_a_call_the_reply_is_plain_text(oai):
    r = await oai.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "just <tool text"}],
                                          tools=[WEATHER], temperature=0)
    assert r.choices[0].message.content == "just <tool text" and r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.tool_calls is None


async def test_tool_choice_none_hides_the_tools(http, fakes):
    r = await http.post("/v1/chat/completions", json=ask(CALL_TEXT, tools=[WEATHER], tool_choice="none"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == CALL_TEXT
    assert fakes.chat.requests[-1].messages == [{"role": "user", "content": CALL_TEXT}]


async def test_completions_take_response_format_as_an_extension(http, fakes):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}
    r = await http.post("/v1/completions", json={"model": CHAT, "prompt": "hi", "response_format": bad})
    assert_error(r, 400, param="response_format.json_schema.schema")
    r = await http.post("/v1/completions", json={"model": CHAT, "prompt": "hi",
                                                 "response_format": {"type": "json_object"}})
    assert_error(r, 400, param="response_format")  # the fake engine cannot constrain: said, not ignored
    assert fakes.chat.requests[-1].grammar.kind == "json_object"
