"""Prefix caching: the block pool's keys, references and LRU eviction, and the engine reusing cached prefixes with
outputs token-for-token equal to HF `generate` and to the engine without the cache (NaN-poisoned memory), also when
small steps run on int4 weights that compute other KV than a prefill."""
import pytest
import torch
from torch import nn

from models.llm.block_manager import BlockPool, block_keys
from models.llm.config import EngineConfig
from models.llm.cpu_int4 import SMALL_ROWS, Int4DecodeLinear, capture_lossless_int4, int4_supported
from models.llm.engine import HFEngine
from models.llm.loader import load_causal_lm
from models.llm.types import SamplingParams
from tests.fixtures.tiny_llm import build_tiny_llm
from tests.unit.test_llm_batching import drive, poison, reference
from tests.unit.test_llm_int4 import as_q4_1


def test_block_keys_chain_so_a_block_is_keyed_by_everything_before_it():
    a = block_keys(list(range(10)), 4)
    assert len(a) == 2 and block_keys(list(range(12)), 4)[:2] == a  # only full blocks; a longer stream extends
    changed_first = block_keys([99, *range(1, 10)], 4)
    assert changed_first[0] != a[0] and changed_first[1] != a[1]  # same tokens in block 1, other parent
    assert block_keys(list(range(4, 10)), 4, parent=a[0]) == a[1:]  # continuing a chain from its last key
    assert block_keys(list(range(12)), 4, count=1) == a[:1]


def test_pool_matches_the_longest_cached_run_and_counts_references():
    pool = BlockPool(4)
    keys = block_keys(list(range(12)), 4)  # 3 blocks
    ids = [pool.allocate(k) for k in keys[:2]]
    assert None not in ids and pool.allocate(keys[0]) is None  # already cached
    pool.release(ids)
    assert pool.match(keys) == ids  # block 2 is not cached: the run stops there
    assert pool.match([keys[1]]) == [ids[1]]  # (a run need not start at the root key; callers pass whole chains)
    pool.release(ids)
    pool.release([ids[1]])
    with pytest.raises(ValueError):
        pool.release([ids[1]])


def test_eviction_takes_the_least_recently_used_unreferenced_block_and_never_a_referenced_one():
    pool = BlockPool(2)
    k = block_keys(list(range(16)), 4)
    first, second = pool.allocate(k[0]), pool.allocate(k[1])
    pool.release([second, first])  # released tail first: `second` is the older, evicted first
    third = pool.allocate(k[2])
    assert third == second and pool.match(k[:2]) == [first]  # k[1] was evicted; k[0] is still cached (now held)
    assert pool.allocate(k[3]) is None  # both ids referenced: nothing to evict
    pool.release([first, third])
    assert pool.num_free == 2 and pool.num_cached == 2
    fourth = pool.allocate(k[3])
    pool.forget(fourth)  # its contents could not be written: uncached and free again
    assert pool.match([k[3]]) == [] and fourth in pool.free_ids()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_causal_lm(build_tiny_llm(str(tmp_path_factory.mktemp("tiny_llm"))), dtype="float32")


def shared_prefix_plan(vocab: int) -> tuple[dict, dict]:
    """Requests sharing a 37-token system prefix, joining over time, and a second turn that extends a first turn's
    prompt with its output: {step: {rid: (prompt, n)}}, and {rid: (turn-one rid, new tokens)} for second turns."""
    gen = torch.Generator().manual_seed(3)
    system = torch.randint(3, vocab, (37,), generator=gen).tolist()
    plan = {}
    for i in range(6):  # 0, 0, 8, 8, 16, 16: later requests find what earlier ones published
        question = torch.randint(3, vocab, (3 + 5 * i,), generator=gen).tolist()
        plan.setdefault(8 * (i // 2), {})[f"q{i}"] = (system + question, 4 + i)
    return plan, {"t2": ("q0", torch.randint(3, vocab, (6,), generator=gen).tolist())}


def poison_lanes(engine):
    """NaN in the slot lanes only (the pool keeps what earlier requests stored)."""
    for t in (*engine.runner.cache.keys, *engine.runner.cache.values):
        t.fill_(float("nan"))
    engine.runner.cache.initialized_len = 0


@pytest.mark.parametrize("prefix_cache_gb", [None, 1e-3, 2e-5])  # off; room for all; 3 blocks (evictions)
def test_prefix_caching_matches_generate_and_counts_hits(loaded, prefix_cache_gb):
    model, tok = loaded
    config = EngineConfig(max_running=3, max_batched_tokens=16, kv_block_size=8,
                          prefix_caching=prefix_cache_gb is not None, prefix_cache_gb=prefix_cache_gb or 0.5)
    engine = HFEngine(model, tok, config)
    assert (engine.runner.prefix is not None) == config.prefix_caching
    poison(engine)  # the lanes and every prefix block: a read of a block that was never written cannot pass
    plan, turns = shared_prefix_plan(len(tok))
    got, _ = drive(engine, plan)
    for joins in plan.values():
        for rid, (prompt, n) in joins.items():
            assert got[rid] == reference(model, prompt, n), rid
    (first, extra), = turns.values()
    prompt = next(p for j in plan.values() for r, (p, _) in j.items() if r == first) + got[first] + extra
    second, _ = drive(engine, {0: {"t2": (prompt, 5)}})
    assert second["t2"] == reference(model, prompt, 5)
    stats = engine.stats()
    total = sum(len(p) for j in plan.values() for p, _ in j.values()) + len(prompt)
    assert stats.prefix_cache_hit_tokens + stats.prefix_cache_miss_tokens == (total if config.prefix_caching else 0)
    assert stats.prompt_tokens == total - stats.prefix_cache_hit_tokens
    if prefix_cache_gb == 1e-3:
        # q2..q5 find the 32 tokens of the system prompt's full blocks; the second turn finds its first turn's
        # prompt and output blocks (8 * floor((len - 1) / 8) of q0's prompt + output).
        assert stats.prefix_cache_hit_tokens >= 4 * 32 + 8 * ((len(prompt) - len(extra) - 1) // 8)
    elif prefix_cache_gb == 2e-5:
        assert engine.runner.prefix.pool.num_blocks < 8 and stats.prefix_cache_hit_tokens > 0


def test_a_hit_leaves_the_last_prompt_token_to_compute(loaded):
    model, tok = loaded
    engine = HFEngine(model, tok, EngineConfig(max_running=2, kv_block_size=4, prefix_caching=True))
    prompt = list(range(5, 21))  # 16 tokens: 4 full blocks
    first, _ = drive(engine, {0: {"a": (prompt, 3)}})
    poison_lanes(engine)  # "b" gets "a"'s lane back: only the copy from the pool may fill it
    again, _ = drive(engine, {0: {"b": (prompt, 3)}})
    assert first["a"] == again["b"] == reference(model, prompt, 3)
    assert engine.stats().prefix_cache_hit_tokens == 12  # 3 blocks: the 4th holds the token whose logits we need


def test_seeded_sampling_gives_the_same_output_from_a_cached_prefix(loaded):
    model, tok = loaded
    engine = HFEngine(model, tok, EngineConfig(max_running=2, kv_block_size=4, prefix_caching=True))
    prompt = tok.encode("The capital of France is Paris. The capital of Italy is")
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=12, stop=["Rome"], ignore_eos=True)
    outputs = []
    for rid in ("first", "again"):  # one after the other: "again" finds "first"'s blocks
        poison_lanes(engine)
        engine.add_request(rid, prompt, params)
        tokens, text = [], ""
        while engine.has_unfinished_requests():
            for out in engine.step():
                tokens += out.new_token_ids
                text += out.new_text
        outputs.append((tokens, text))
    assert outputs[0] == outputs[1] and outputs[0][0]
    assert engine.stats().prefix_cache_hit_tokens == 4 * ((len(prompt) - 1) // 4) > 0


@pytest.fixture(scope="module")
def tiny_q4_dir(tmp_path_factory):
    return build_tiny_llm(str(tmp_path_factory.mktemp("tiny_q4")))


def skewed_int4_engine(folder, prefix_caching: bool) -> HFEngine:
    """An engine on the tiny model with 4-bit weights whose int4 path computes their negation: KV from a step of at
    most SMALL_ROWS tokens differs from a prefill's (as int4 vs bf16 on SmolLM2, only far more), so reusing it where
    a fresh request computes it in a large step changes greedy tokens."""
    model, tok = load_causal_lm(folder, dtype="float32")
    with torch.no_grad():
        for i, layer in enumerate(m for m in model.modules() if type(m) is nn.Linear and m.in_features % 32 == 0):
            layer.weight.copy_(as_q4_1(layer.weight, seed=i))
    config = EngineConfig(max_running=2, kv_block_size=4, prefix_caching=prefix_caching)
    engine = HFEngine(model, tok, config, int4_weights=capture_lossless_int4(model))
    assert engine.int4_linears > 0
    for layer in engine.model.modules():
        if isinstance(layer, Int4DecodeLinear):
            layer.scales_zeros = -layer.scales_zeros  # w = (q - 8) * scale + zero, negated
    return engine


def run_alone(engine, prompts: list[list[int]], n: int) -> list[list[int]]:
    """Greedy outputs of `n` tokens for each prompt, one request after the other."""
    return [drive(engine, {0: {f"r{i}": (prompt, n)}})[0][f"r{i}"] for i, prompt in enumerate(prompts)]


@pytest.mark.skipif(not int4_supported(), reason="this torch has no CPU int4 matmul")
def test_blocks_computed_by_int4_steps_are_not_published(tiny_q4_dir):
    engine, fresh = skewed_int4_engine(tiny_q4_dir, True), skewed_int4_engine(tiny_q4_dir, False)
    first, extra = list(range(40, 60)), [7, 8, 9, 10, 11, 12]  # 20 tokens: one prefill step, then lone decodes
    got = []
    for e in (engine, fresh):
        answer, = run_alone(e, [first], 10)
        if e is engine:
            assert engine.runner.prefix.pool.num_cached == 5  # the prompt's blocks; none of the int4-decoded answer
        got.append((answer, run_alone(e, [first + answer + extra], 6)))  # a chat's second turn
    assert got[0] == got[1]
    assert engine.stats().prefix_cache_hit_tokens == 20


@pytest.mark.skipif(not int4_supported(), reason="this torch has no CPU int4 matmul")
def test_a_hit_never_leaves_a_lone_step_of_small_rows(tiny_q4_dir):
    engine, fresh = skewed_int4_engine(tiny_q4_dir, True), skewed_int4_engine(tiny_q4_dir, False)
    system = list(range(40, 64))  # 24 tokens: 6 blocks, published by the first request
    prompts = [system + [5]] + [system[:cut] + [5, 6] for cut in range(14, 25)]
    assert run_alone(engine, prompts, 3) == run_alone(fresh, prompts, 3)
    hits = engine.stats().prefix_cache_hit_tokens
    # Each later prompt (len = cut + 2) hits the most whole blocks that leave more than SMALL_ROWS tokens.
    assert hits == sum(4 * ((cut + 2 - 1 - SMALL_ROWS) // 4) for cut in range(14, 25)) > 0
