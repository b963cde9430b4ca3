"""POST /v1/responses (stateless) over the fake chat model, with the official openai client."""
import json

import pytest

from tests.api_fakes import CHAT, FakeChatClient, Fakes, app, assert_error, http, oai  # noqa: F401

CALL_TEXT = 'ok<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def fakes():
    fakes = Fakes(chat=FakeChatClient(context_size=4096))
    yield fakes
    fakes.close()


async def test_text_input_and_instructions(oai, fakes):
    r = await oai.responses.create(model=CHAT, input="hello there", instructions="be brief", temperature=0)
    assert r.status == "completed" and r.output_text == "hello there" and r.id.startswith("resp")
    assert r.usage.output_tokens == len("hello there") + 1 and r.usage.input_tokens > 0
    assert fakes.chat.requests[-1].messages == [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "hello there"}]


async def test_item_input_with_a_function_call_and_its_output(oai, fakes):
    items = [{"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
             {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
             {"type": "function_call_output", "call_id": "c1", "output": "cold"},
             {"role": "user", "content": "thanks"}]
    r = await oai.responses.create(model=CHAT, input=items, tools=[WEATHER], temperature=0)
    assert r.output_text == "thanks"
    sent = fakes.chat.requests[-1].messages
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "user"]
    assert sent[3]["content"] == "<tool_response>\ncold\n</tool_response>"


async def test_max_output_tokens_gives_an_incomplete_response(oai):
    r = await oai.responses.create(model=CHAT, input="hello there", max_output_tokens=3, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "hel"


async def test_streaming_events_in_order(oai):
    stream = await oai.responses.create(model=CHAT, input="hello", temperature=0, stream=True)
    events = [e async for e in stream]
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "hello"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "hello"


async def test_auto_tool_call_is_a_function_call_item_whole_and_streamed(oai):
    r = await oai.responses.create(model=CHAT, input=CALL_TEXT, tools=[WEATHER], temperature=0)
    kinds = [item.type for item in r.output]
    assert kinds == ["message", "function_call"] and r.output_text == "ok"
    call = r.output[1]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    stream = await oai.responses.create(model=CHAT, input=CALL_TEXT, tools=[WEATHER], temperature=0, stream=True)
    events = [e async for e in stream]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"city": "Paris"} and events[-1].type == "response.completed"


@pytest.mark.parametrize("extra, param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "wat"}}}},
     "response_format.json_schema.schema"),
])
async def test_stateful_and_bad_requests_are_400(http, extra, param):
    r = await http.post("/v1/responses", json={"model": CHAT, "input": "hi", **extra})
    assert_error(r, 400, param=param)
