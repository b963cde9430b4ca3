"""HFEngine on a tiny random Llama: exact greedy parity with generate, sampling, stops, abort, limits, logprobs.

Every engine here runs the batched path (slot attention) unless a test says otherwise; `make_engine` checks it,
since a model that fails the load-time probe would silently run the per-request fallback instead.
"""
import inspect

import pytest
import torch

from models.errors import ModelInputError
from models.llm.config import EngineConfig
from models.llm.engine import HFEngine
from models.llm.loader import load_causal_lm
from models.llm.types import LLMEngine, SamplingParams
from tests.fixtures.tiny_llm import build_tiny_llm


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_llm(str(tmp_path_factory.mktemp("tiny_llm")))


@pytest.fixture(scope="module")
def loaded(tiny_path):
    return load_causal_lm(tiny_path, dtype="float32")


def make_engine(model, tokenizer, **options):
    engine = HFEngine(model, tokenizer, EngineConfig(**options))
    assert engine.batched
    return engine


@pytest.fixture
def engine(loaded):
    model, tokenizer = loaded
    return make_engine(model, tokenizer)


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def run(engine, requests):
    """Add {rid: (prompt_ids, params)} and step to completion; return {rid: (token_ids, text, outputs)}."""
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    results = {rid: ([], "", []) for rid in requests}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens, text, outs = results[out.request_id]
            results[out.request_id] = (tokens + out.new_token_ids, text + out.new_text, outs + [out])
    return results


def generate_greedy(model, prompt, max_new_tokens):
    input_ids = torch.tensor([prompt])  # [1, T]
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                         max_new_tokens=max_new_tokens)  # [1, T + N]
    return out[0, len(prompt):].tolist()


def test_greedy_matches_generate_with_requests_joining_and_leaving(loaded):
    model, tok = loaded
    engine = make_engine(model, tok, max_running=3)
    chat = tok.apply_chat_template([{"role": "user", "content": "Hello, how are you?"}], add_generation_prompt=True,
                                   tokenize=False)
    plan = {  # step at which each request joins: (prompt ids, max_tokens)
        0: {"a": (ids(tok, "The capital of France is"), 16)},
        2: {"b": (ids(tok, "Hi"), 5)},
        4: {"c": (ids(tok, chat), 9), "d": (ids(tok, "One two three four five six seven eight nine"), 6)},
    }
    got, steps_seen, step = {}, {}, 0
    while step <= max(plan) or engine.has_unfinished_requests():
        for rid, (prompt, n) in plan.get(step, {}).items():
            engine.add_request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=n))
        for out in engine.step():
            tokens, text = got.get(out.request_id, ([], ""))
            got[out.request_id] = (tokens + out.new_token_ids, text + out.new_text)
            steps_seen.setdefault(out.request_id, []).append(step)
        step += 1
    assert steps_seen["d"][0] == steps_seen["b"][-1] + 1  # "d" waited for the slot "b" freed (max_running=3)
    assert steps_seen["a"][-1] > max(steps_seen["c"][-1], steps_seen["d"][-1])  # "a" finished alone
    for joins in plan.values():
        for rid, (prompt, n) in joins.items():
            expected = generate_greedy(model, prompt, n)
            assert got[rid][0] == expected, rid
            assert got[rid][1] == tok.decode(expected, skip_special_tokens=True), rid


def test_seeded_sampling_is_reproducible_and_independent_of_neighbours(engine):
    prompt = ids(engine.tokenizer, "Hello world")

    def sample(seed, neighbours=0):
        reqs = {f"n{i}": (prompt, SamplingParams(temperature=1.0, max_tokens=12)) for i in range(neighbours)}
        reqs["x"] = (prompt, SamplingParams(temperature=1.0, top_p=0.9, max_tokens=12, seed=seed, ignore_eos=True))
        return run(engine, reqs)["x"][0]

    first = sample(42)
    assert sample(42) == first
    assert sample(42, neighbours=2) == first
    assert sample(43) != first


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63), 2**63])
def test_any_64_bit_seed_samples_reproducibly(engine, seed):
    prompt = ids(engine.tokenizer, "Hello world")

    def sample(seed):
        params = SamplingParams(temperature=1.0, max_tokens=6, seed=seed, ignore_eos=True)
        return run(engine, {"x": (prompt, params)})["x"][0]

    first = sample(seed)
    assert len(first) == 6 and sample(seed) == first
    assert sample(seed - 2**64 if seed >= 2**63 else seed + 2**64) == first  # the same 64 bits, signed or not


def test_stop_string_spanning_two_tokens_cuts_exactly(engine):
    tok = engine.tokenizer
    prompt = ids(tok, "The capital of France is")
    free = run(engine, {"f": (prompt, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))})["f"]
    pieces = [tok.decode([t]) for t in free[0]]
    k = next(i for i in range(3, len(pieces) - 1)
             if pieces[i] and pieces[i + 1] and "\ufffd" not in pieces[i] + pieces[i + 1])
    stop = pieces[k][-1] + pieces[k + 1][0]  # ends inside token k + 1, starts inside token k
    full = free[1]
    expected = full[: full.find(stop)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=["never-there", stop])
    tokens, text, outs = run(engine, {"s": (prompt, params)})["s"]
    assert text == expected and stop not in text
    assert outs[-1].finish_reason == "stop" and outs[-1].finished
    assert tokens == free[0][: len(tokens)] and len(tokens) <= k + 2


def test_stop_token_ids_and_generation_config_eos_finish_with_stop(tiny_path):
    model, tok = load_causal_lm(tiny_path, dtype="float32")  # a private copy: this test edits its generation config
    engine = make_engine(model, tok)
    prompt = ids(tok, "Hello")
    free = run(engine, {"f": (prompt, SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))})["f"][0]
    target = free[3]
    first = free.index(target)
    tokens, text, outs = run(engine, {"s": (prompt, SamplingParams(temperature=0.0, stop_token_ids=[target]))})["s"]
    assert tokens == free[: first + 1] and outs[-1].finish_reason == "stop"
    assert text == tok.decode(free[:first], skip_special_tokens=True)  # the stop token's text is not emitted
    model.generation_config.eos_token_id = [tok.eos_token_id, target]
    engine = make_engine(model, tok)
    assert run(engine, {"e": (prompt, SamplingParams(temperature=0.0))})["e"][0] == free[: first + 1]
    ignored = run(engine, {"i": (prompt, SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))})["i"]
    assert ignored[0] == free and ignored[2][-1].finish_reason == "length"


def test_max_tokens_and_context_end_with_length(loaded):
    model, tok = loaded
    engine = make_engine(model, tok, max_model_len=12)
    prompt = ids(tok, "One two three four five")
    assert len(prompt) < 12
    tokens, _, outs = run(engine, {"a": (prompt, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))})["a"]
    assert len(tokens) == 3 and outs[-1].finish_reason == "length"
    assert [o.num_output_tokens for o in outs] == [1, 2, 3]
    assert {o.num_prompt_tokens for o in outs} == {len(prompt)}
    assert [o.finished for o in outs] == [False, False, True]
    tokens, _, outs = run(engine, {"b": (prompt, SamplingParams(max_tokens=None, ignore_eos=True))})["b"]
    assert len(prompt) + len(tokens) == 12 and outs[-1].finish_reason == "length"


def test_logprobs_have_top_alternatives_matching_the_model(engine):
    tok = engine.tokenizer
    prompt = ids(tok, "The capital of")
    params = SamplingParams(temperature=0.0, max_tokens=4, logprobs=True, top_logprobs=3, ignore_eos=True)
    tokens, _, outs = run(engine, {"a": (prompt, params)})["a"]
    with torch.inference_mode():
        first = torch.log_softmax(engine.model(torch.tensor([prompt])).logits[0, -1].float(), -1)  # [V]
    for token, out in zip(tokens, outs):
        (lp,) = out.logprobs
        assert lp.token_id == token and lp.token == tok.decode([token]) and lp.logprob <= 0
        assert len(lp.top) == 3 and lp.top[0][0] == token  # greedy: the chosen token is the best
        assert [x[2] for x in lp.top] == sorted((x[2] for x in lp.top), reverse=True)
    assert outs[0].logprobs[0].logprob == pytest.approx(float(first[tokens[0]]), abs=1e-5)
    plain = run(engine, {"b": (prompt, SamplingParams(max_tokens=2))})["b"][2]
    assert all(o.logprobs is None for o in plain)


def test_abort_frees_capacity_immediately(loaded):
    model, tok = loaded
    engine = make_engine(model, tok, max_running=1)
    prompt = ids(tok, "Hello")
    for rid in ("a", "b", "c"):
        engine.add_request(rid, prompt, SamplingParams(max_tokens=50, ignore_eos=True))
    assert [o.request_id for o in engine.step()] == ["a"]
    engine.abort("a")  # running
    engine.abort("c")  # waiting
    engine.abort("unknown")
    assert engine.unfinished_request_ids() == ["b"] and engine.num_unfinished_requests() == 1
    assert [o.request_id for o in engine.step()] == ["b"]  # "b" took the freed slot at once
    engine.abort("b")
    assert not engine.has_unfinished_requests() and engine.step() == []


@pytest.mark.parametrize(
    ("prompt_len", "params", "param"),
    [
        (0, SamplingParams(), "messages"),
        (30, SamplingParams(max_tokens=3), "messages"),  # the prompt alone fills the context
        (20, SamplingParams(max_tokens=11), "max_tokens"),
        (20, SamplingParams(max_tokens=0), "max_tokens"),
        (5, SamplingParams(temperature=-1.0), "temperature"),
        (5, SamplingParams(top_p=0.0), "top_p"),
        (5, SamplingParams(logprobs=True, top_logprobs=21), "top_logprobs"),
        (5, SamplingParams(seed=2**64), "seed"),  # torch.Generator.manual_seed raised on these inside step()
        (5, SamplingParams(seed=2**70), "seed"),
        (5, SamplingParams(seed=-(2**63) - 1), "seed"),
        (5, SamplingParams(seed=True), "seed"),
        (5, SamplingParams(temperature=float("inf")), "temperature"),
        (5, SamplingParams(top_k=2.5), "top_k"),
        (5, SamplingParams(logit_bias={10**6: 1.0}), "logit_bias"),
        (5, SamplingParams(logit_bias={3: 101.0}), "logit_bias"),
        (5, SamplingParams(logit_bias={3: float("nan")}), "logit_bias"),
        (5, SamplingParams(stop=[3]), "stop"),
    ],
)
def test_requests_that_cannot_run_are_refused(loaded, prompt_len, params, param):
    model, tok = loaded
    engine = make_engine(model, tok, max_model_len=30)
    with pytest.raises(ModelInputError) as info:
        engine.add_request("r", [5] * prompt_len, params)
    assert info.value.param == param
    assert not engine.has_unfinished_requests()


def test_out_of_vocabulary_ids_and_duplicate_ids_are_refused(engine):
    with pytest.raises(ModelInputError):
        engine.add_request("r", [engine.vocab_size], SamplingParams())
    engine.add_request("r", [5, 6], SamplingParams())
    with pytest.raises(ValueError):
        engine.add_request("r", [5, 6], SamplingParams())


def test_max_model_len_defaults_to_the_config_and_is_capped_by_the_argument(loaded):
    model, tok = loaded
    assert HFEngine(model, tok).max_model_len == model.config.max_position_embeddings == 256
    assert HFEngine(model, tok, EngineConfig(max_model_len=100)).max_model_len == 100
    assert HFEngine(model, tok, EngineConfig(max_model_len=10_000)).max_model_len == 256


def assert_implements_llm_engine(engine):
    """Every attribute and method of the LLMEngine protocol is there, methods with the protocol's parameters."""
    for name in LLMEngine.__annotations__:
        assert hasattr(engine, name), name
    methods = [n for n, v in vars(LLMEngine).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert {"add_request", "step", "abort", "has_unfinished_requests", "stats", "is_alive", "close"} <= set(methods)
    for name in methods:
        wanted = list(inspect.signature(getattr(LLMEngine, name)).parameters)[1:]
        assert list(inspect.signature(getattr(engine, name)).parameters)[: len(wanted)] == wanted, name


def test_the_engine_implements_the_protocol_and_counts_what_it_does(loaded):
    model, tok = loaded
    engine = make_engine(model, tok, max_running=2, max_queued=5)
    assert_implements_llm_engine(engine)
    assert (engine.max_running, engine.max_queued, engine.vocab_size) == (2, 5, model.config.vocab_size)
    prompts = {rid: ids(tok, text) for rid, text in (("a", "Hello"), ("b", "The capital of"), ("c", "One two"))}
    for rid, prompt in prompts.items():
        engine.add_request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    engine.step()
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.kv_slots_used, stats.kv_slots_total) == (2, 1, 2, 2)
    assert stats.prompt_tokens == len(prompts["a"]) + len(prompts["b"]) and stats.generated_tokens == 2
    assert stats.kv_tokens_used == stats.prompt_tokens and stats.batched and stats.cuda_graphs == 0
    engine.abort("c")
    while engine.has_unfinished_requests():
        engine.step()
    stats = engine.stats()
    assert (stats.finished_requests, stats.aborted_requests, stats.generated_tokens) == (2, 1, 8)
    assert stats.steps == 4 and stats.busy_s > 0 and (stats.running, stats.kv_slots_used) == (0, 0)
    assert engine.is_alive()
    engine.add_request("d", prompts["a"], SamplingParams(max_tokens=4))
    engine.close()
    assert not engine.is_alive() and not engine.has_unfinished_requests() and engine.step() == []
    with pytest.raises(RuntimeError):
        engine.add_request("e", prompts["a"], SamplingParams())


class AllowOnly:
    """A trivial TokenMask: only `allowed` may be sampled; records what the engine says was sampled."""

    def __init__(self, allowed):
        self.allowed, self.accepted = sorted(allowed), []

    def fill_bitmask(self, bitmask, row):
        for t in self.allowed:
            word = int(bitmask[row, t // 32]) % 2**32 | 1 << (t % 32)
            bitmask[row, t // 32] = word - 2**32 if word >= 2**31 else word

    def accept_token(self, token_id):
        self.accepted.append(token_id)


def test_a_token_mask_limits_a_request_and_hears_every_token(engine):
    prompt = ids(engine.tokenizer, "The capital of France is")
    free = run(engine, {"f": (prompt, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))})["f"][0]
    allowed = {t for t in range(40, 60)} - set(free)  # none of the tokens greedy decoding picks
    greedy, sampled = AllowOnly(allowed), AllowOnly(allowed)
    engine.add_request("g", prompt, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True), constraint=greedy)
    engine.add_request("s", prompt, SamplingParams(temperature=1.0, max_tokens=6, ignore_eos=True, seed=1),
                       constraint=sampled)
    engine.add_request("n", prompt, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    tokens = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    assert greedy.accepted == tokens["g"] and sampled.accepted == tokens["s"] and len(tokens["g"]) == 6
    assert set(tokens["g"]) <= allowed and set(tokens["s"]) <= allowed and tokens["n"] == free  # "n" is free
