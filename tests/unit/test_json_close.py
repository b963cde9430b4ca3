"""json_object closes inside its token budget (models/llm/json_close.py), on the tiny random Llama: the random model
never closes JSON by itself, so without the budget watch the outputs are cut; with it every one parses."""
import json

import numpy as np
import pytest
import torch

from models.llm.config import EngineConfig
from models.llm.constraints import words
from models.llm.engine import HFEngine
from models.llm.guided import Grammar, GrammarCompiler
from models.llm.json_close import BudgetCloser
from models.llm.loader import load_causal_lm
from models.llm.sequence import Sequence
from models.llm.types import SamplingParams
from tests.fixtures.json_walks import check_closing_bound
from tests.fixtures.tiny_llm import build_tiny_llm

OBJECT = Grammar("json_object")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_causal_lm(build_tiny_llm(str(tmp_path_factory.mktemp("tiny_llm"))), dtype="float32")


@pytest.fixture(scope="module")
def compiler(loaded):
    model, tokenizer = loaded
    return GrammarCompiler(tokenizer, model.config.vocab_size)


def generate(loaded, compiler, max_tokens: int, seeds, closing: bool) -> list[tuple[str, str]]:
    """(text, finish_reason) of one json_object request per seed, run together on one engine."""
    model, tokenizer = loaded
    engine = HFEngine(model, tokenizer, EngineConfig(max_model_len=256))
    prompt = tokenizer.encode("hello", add_special_tokens=False)
    for seed in seeds:
        mask = compiler.compile(OBJECT, budget=max_tokens if closing else None)
        engine.add_request(f"r{seed}", prompt, SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed),
                           constraint=mask)
    texts, reasons = {f"r{s}": "" for s in seeds}, {}
    for _ in range(max_tokens + 2):
        for out in engine.step():
            texts[out.request_id] += out.new_text
            if out.finished:
                reasons[out.request_id] = out.finish_reason
        if not engine.has_unfinished_requests():
            break
    engine.close()
    return [(texts[f"r{s}"], reasons[f"r{s}"]) for s in seeds]


def parses(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


@pytest.mark.parametrize("max_tokens", [4, 11, 24])
def test_every_output_closes_within_max_tokens(loaded, compiler, max_tokens):
    seeds = range(8)
    cut = generate(loaded, compiler, max_tokens, seeds, closing=False)
    assert sum(not parses(t) for t, _ in cut) >= 2, cut  # the random model does get cut without the watch
    closed = generate(loaded, compiler, max_tokens, seeds, closing=True)
    assert all(parses(t) for t, _ in closed), closed
    # the ones the random model did not end by itself say that the budget ended them
    assert sum(reason == "length" for _, reason in closed) >= 2, closed


def test_a_far_budget_leaves_the_grammar_mask_as_it_is(compiler, loaded):
    tokenizer = loaded[1]
    free, watched = compiler.compile(OBJECT), compiler.compile(OBJECT, budget=200)
    for token in tokenizer.encode('{"a":[1,{"b":"xy', add_special_tokens=False):
        rows = torch.zeros(2, words(compiler.tokenizer_view().vocab_size), dtype=torch.int32)
        free.fill_bitmask(rows, 0)
        watched.fill_bitmask(rows, 1)
        assert torch.equal(rows[0], rows[1])
        assert not free.accept_token(token) and not watched.accept_token(token)


def test_a_token_never_raises_the_closing_cost_past_its_bound(compiler):
    """The guarantee json_close.py rests on, along random walks through json_object on the tiny vocabulary."""
    assert check_closing_bound(compiler, seed=7, walks=6, steps=60, structural=0.5) > 100


def test_narrowing_keeps_the_policy_token_and_drops_what_cannot_fit(compiler, loaded):
    mask = compiler.compile(OBJECT, budget=40)
    for token in loaded[1].encode('{"a":"bc', add_special_tokens=False):
        mask.accept_token(token)
    closer: BudgetCloser = mask.closer
    closer.used = 38  # two tokens left: the close ('"', '}') takes both, so nothing else may be sampled
    rows = torch.zeros(1, words(compiler.tokenizer_view().vocab_size), dtype=torch.int32)
    mask.fill_bitmask(rows, 0)
    bits = np.unpackbits(rows.numpy()[0].view(np.uint8), bitorder="little")
    quote = compiler.tokenizer_view().tokenize_str('"')
    assert [int(t) for t in np.nonzero(bits)[0]] == quote and closer.forced  # string content was dropped


def test_sequence_last_token_finishes_as_length(loaded):
    tokenizer = loaded[1]
    seq = Sequence("s", [1, 2], SamplingParams(max_tokens=10), tokenizer, [tokenizer.eos_token_id], 10)
    assert not seq.append(5).finished
    out = seq.append(6, last=True)
    assert out.finished and out.finish_reason == "length"
