"""Grammar-constrained decoding on the tiny random Llama (fast): the engine core compiles a request's grammar off
its thread and the sampler keeps the row inside it; other rows are untouched; bad grammars fail their request."""
import json

import pytest

from models.errors import ModelInputError
from models.llm.config import EngineConfig
from models.llm.engine import HFEngine
from models.llm.guided import Grammar, check_grammar
from models.llm.loader import load_causal_lm
from models.llm.types import SamplingParams
from serving.services.engine_core import EngineCore
from serving.services.engine_messages import AddRequest, RequestFailed, StepOutputs
from tests.fixtures.tiny_llm import build_tiny_llm

SCHEMA = {"type": "object", "properties": {"pick": {"enum": ["alpha", "beta"]}, "n": {"type": "integer",
          "minimum": 0, "maximum": 9}}, "required": ["pick", "n"], "additionalProperties": False}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_causal_lm(build_tiny_llm(str(tmp_path_factory.mktemp("tiny_llm"))), dtype="float32")


@pytest.fixture
def core(loaded):
    model, tokenizer = loaded
    return EngineCore(HFEngine(model, tokenizer, EngineConfig(max_model_len=256)))


def run(core, requests, max_steps=400):
    """Add the requests, step until none is left (bounded); {rid: text or the RequestFailed}."""
    for request in requests:
        assert core.add(request) is None
    results = {r.request_id: "" for r in requests}
    for _ in range(max_steps):
        if not core.has_work():
            return results
        for event in core.step():
            if isinstance(event, RequestFailed):
                results[event.request_id] = event
            for out in event.outputs if isinstance(event, StepOutputs) else []:
                results[out.request_id] += out.new_text
    raise AssertionError(f"still running after {max_steps} steps: {results}")


def test_constrained_rows_follow_their_schema_and_plain_rows_are_untouched(core, loaded):
    prompt = loaded[1].encode("hello", add_special_tokens=False)
    plain = SamplingParams(max_tokens=12, temperature=1.0, seed=5, ignore_eos=True)
    alone = run(core, [AddRequest("p", prompt, plain)])["p"]
    grammar = Grammar.json_schema(SCHEMA)
    requests = [AddRequest(f"g{i}", prompt, SamplingParams(max_tokens=60, temperature=1.0, seed=i), grammar)
                for i in range(4)]
    results = run(core, [*requests, AddRequest("p2", prompt, plain)])
    assert results["p2"] == alone  # a random model, its row unmasked: the same draws beside constrained rows
    for i in range(4):
        value = json.loads(results[f"g{i}"])  # a random model, yet every output is in the schema
        assert set(value) == {"pick", "n"} and value["pick"] in ("alpha", "beta") and 0 <= value["n"] <= 9


def test_json_object_ends_when_the_object_closes(core, loaded):
    prompt = loaded[1].encode("hi", add_special_tokens=False)
    text = run(core, [AddRequest("o", prompt, SamplingParams(max_tokens=200, temperature=0), Grammar("json_object"))])
    assert isinstance(json.loads(text["o"]), dict)


def test_a_bad_grammar_fails_its_request_alone(core, loaded):
    prompt = loaded[1].encode("hi", add_special_tokens=False)
    results = run(core, [AddRequest("bad", prompt, SamplingParams(max_tokens=5), Grammar("lark", "start: nope")),
                         AddRequest("ok", prompt, SamplingParams(max_tokens=5, temperature=0))])
    assert isinstance(results["bad"], RequestFailed) and isinstance(results["bad"].error, ModelInputError)
    assert isinstance(results["ok"], str) and results["ok"]


def test_check_grammar_names_the_problem():
    with pytest.raises(ModelInputError, match="Invalid response_format: .*wat") as e:
        check_grammar(Grammar.json_schema({"type": "wat"}), "response_format")
    assert e.value.param == "response_format"
    check_grammar(Grammar.json_schema(SCHEMA), "response_format")
