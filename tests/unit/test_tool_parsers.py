"""Tool readers: the same calls whole and streamed in any chunking (serving/tools/parsers.py)."""
import json
import random

import pytest

from serving.tools.parsers import ForcedCallReader, HermesReader, JsonReader


def read(reader, pieces):
    """(content, [(name, arguments)]) assembled from the deltas of `pieces`, as a streaming client would."""
    content, calls = "", {}
    deltas = [reader.feed(p) for p in pieces] + [reader.finish()]
    for d in deltas:
        content += d.content
        for c in d.calls:
            if c.name is not None:
                assert c.index not in calls, "a call's name comes once"
                calls[c.index] = [c.name, ""]
            calls[c.index][1] += c.arguments
    return content, [tuple(calls[i]) for i in sorted(calls)]


def chunkings(text, count=30, seed=0):
    rng = random.Random(seed)
    yield [text]
    yield list(text)
    for _ in range(count):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 8))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


FORCED = '{"name":"search","arguments":{"q":"a}b","n":{"deep":[1,{}]}}}'


def test_forced_call_streams_id_and_name_first_then_arguments_in_pieces():
    for pieces in chunkings(FORCED):
        reader = ForcedCallReader()
        assert read(reader, pieces) == ("", [("search", '{"q":"a}b","n":{"deep":[1,{}]}}')])
        assert [(c.name, c.arguments) for c in reader.calls] == [("search", '{"q":"a}b","n":{"deep":[1,{}]}}')]


def test_forced_call_cut_before_its_name_is_text():
    assert read(ForcedCallReader(), ['{"na']) == ('{"na', [])


HERMES = ('Sure.<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call> and '
          '<tool_call>{"name": "b", "parameters": {}}</tool_call><tool_c')


@pytest.mark.parametrize("seed", range(3))
def test_hermes_reads_every_block_and_keeps_the_rest_as_content(seed):
    for pieces in chunkings(HERMES, seed=seed):
        reader = HermesReader()
        content, calls = read(reader, pieces)
        assert content == "Sure. and <tool_c"
        assert [(n, json.loads(a)) for n, a in calls] == [("a", {"x": 1}), ("b", {})]


def test_hermes_unclosed_block_at_the_end_is_still_a_call_if_it_is_json_else_text():
    assert read(HermesReader(), ['<tool_call>{"name": "a", "arguments": {}}']) == ("", [("a", "{}")])
    assert read(HermesReader(), ["<tool_call>{oops"]) == ("<tool_call>{oops", [])


def test_json_reader_takes_a_whole_object_or_streams_text():
    assert read(JsonReader(), [' {"name": "f", ', '"arguments": {"k": "v"}}']) == ("", [("f", '{"k": "v"}')])
    assert read(JsonReader(), ["hello ", "world"]) == ("hello world", [])
    assert read(JsonReader(), ['{"not": "a call"}']) == ('{"not": "a call"}', [])


def test_parallel_tool_calls_false_keeps_the_first_call():
    content, calls = read(HermesReader(max_calls=1), [HERMES])
    assert [n for n, _ in calls] == ["a"] and content == "Sure. and <tool_c"
