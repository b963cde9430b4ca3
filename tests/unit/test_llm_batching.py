"""Continuous batching: many requests joining and leaving mid-flight, chunked prefill, the slot cache, capacity,
bf16 packed linears, and the architectures on the fast path."""
import pytest
import torch
import transformers as tf

from models.errors import EngineOverloadedError
from models.llm.cpu_linear import PackedLinear, pack_linears
from models.llm.config import EngineConfig
from models.llm.engine import HFEngine
from models.llm.fake import FakeTokenizer
from models.llm.loader import load_causal_lm
from models.llm.types import SamplingParams
from tests.fixtures.tiny_llm import build_tiny_llm


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_causal_lm(build_tiny_llm(str(tmp_path_factory.mktemp("tiny_llm"))), dtype="float32")


def greedy(n, **extra):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **extra)


def reference(model, prompt, n):
    """What HF generate gives greedily for this prompt alone (eos ignored)."""
    input_ids = torch.tensor([prompt])  # [1, T]
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=n,
                         eos_token_id=None, pad_token_id=0)  # [1, T + n]
    return out[0, len(prompt):].tolist()


def drive(engine, plan):
    """plan: {step: {rid: (prompt, n)}}; add each at its step, step until done; {rid: tokens}, {rid: steps}."""
    got, seen, step = {}, {}, 0
    while step <= max(plan) or engine.has_unfinished_requests():
        for rid, (prompt, n) in plan.get(step, {}).items():
            engine.add_request(rid, prompt, greedy(n))
        for out in engine.step():
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
            seen.setdefault(out.request_id, []).append(step)
        step += 1
    return got, seen


def poison(engine):
    """Fill the KV cache (and the prefix cache's blocks) with NaN, as never-written memory may hold: masking must keep
    it out of every result, and only blocks the prefix cache wrote may be copied from it."""
    cache, prefix = engine.runner.cache, engine.runner.prefix
    for t in (*cache.keys, *cache.values, *(prefix.keys + prefix.values if prefix is not None else ())):
        t.fill_(float("nan"))
    cache.initialized_len = 0


@pytest.mark.parametrize("lean_decode", [True, False], ids=["lean-decode", "transformers-forward-decode"])
def test_many_requests_joining_and_leaving_match_generate_token_for_token(loaded, lean_decode):
    model, tok = loaded
    config = EngineConfig(max_running=4, max_batched_tokens=16, lean_decode=lean_decode)  # prompts > 12 tokens: chunks
    engine = HFEngine(model, tok, config)
    assert engine.batched and (engine.runner.fast_decoder is not None) is lean_decode
    poison(engine)
    gen = torch.Generator().manual_seed(1)
    plan = {}
    for i in range(12):  # prompts of 2..40 tokens, 3..14 new tokens, joining over the first 20 steps
        prompt = torch.randint(3, len(tok), (2 + (i * 7) % 39,), generator=gen).tolist()
        plan.setdefault((i * 5) % 20, {})[f"r{i}"] = (prompt, 3 + (i * 5) % 12)
    got, seen = drive(engine, plan)
    for joins in plan.values():
        for rid, (prompt, n) in joins.items():
            assert got[rid] == reference(model, prompt, n), rid
    assert max(len(s) for s in seen.values()) > 0 and not engine.has_unfinished_requests()
    assert engine.scheduler.slots.num_free == 4


def test_queue_bound_refuses_with_overloaded_and_waiting_requests_take_freed_slots(loaded):
    model, tok = loaded
    engine = HFEngine(model, tok, EngineConfig(max_running=2, max_queued=1))
    for rid in ("a", "b", "c"):
        engine.add_request(rid, [5, 6, 7], greedy(4 if rid == "a" else 8))
    with pytest.raises(EngineOverloadedError):
        engine.add_request("d", [5, 6, 7], greedy(4))
    assert {o.request_id for o in engine.step()} == {"a", "b"}  # "c" waits for a slot
    finished_a = None
    for step in range(1, 10):
        outs = {o.request_id: o for o in engine.step()}
        if finished_a is None and outs["a"].finished:
            finished_a = step
        elif finished_a is not None:
            assert "c" in outs  # admitted at the very next step
            break
    engine.add_request("d", [5, 6, 7], greedy(4))  # room again: "a" left
    while engine.has_unfinished_requests():
        engine.step()


def test_abort_mid_prefill_and_mid_decode_frees_the_slot_for_the_next_step(loaded):
    model, tok = loaded
    engine = HFEngine(model, tok, EngineConfig(max_running=1, max_batched_tokens=4))
    engine.add_request("long", list(range(5, 25)), greedy(5))  # a 20-token prompt: 5 chunks of 4
    engine.add_request("next", [5, 6], greedy(2))
    assert engine.step() == [] and engine.runner.cache is not None  # chunk 1 of 5: no token yet
    engine.abort("long")
    assert engine.scheduler.slots.num_free == 1
    assert [o.request_id for o in engine.step()] == ["next"]
    engine.abort("next")
    assert engine.scheduler.slots.num_free == 1 and not engine.has_unfinished_requests()


def test_bf16_linears_are_packed_and_exact_and_the_engine_runs(tmp_path):
    model, tok = load_causal_lm(build_tiny_llm(str(tmp_path / "m")), dtype="bfloat16")
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        before = model(x).logits
        assert pack_linears(model) > 0 and isinstance(model.lm_head, PackedLinear)
        assert torch.equal(model(x).logits, before)
    engine = HFEngine(model, tok, EngineConfig(cpu_packed_linear=False))  # already packed
    assert engine.batched
    engine.add_request("a", [5, 6, 7, 8], greedy(5))
    tokens = []
    while engine.has_unfinished_requests():
        tokens += [t for o in engine.step() for t in o.new_token_ids]
    assert tokens[0] == int(before[0, -1].argmax()) and len(tokens) == 5


ARCHITECTURES = {  # config class, model class, extra config, on the batched path?, on the lean decode path?
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}, True, True),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}, True, True),
    "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {"head_dim": 16}, True, False),
    "mistral-sliding-window": (tf.MistralConfig, tf.MistralForCausalLM, {"sliding_window": 6}, True, True),
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, {"pad_token_id": 0}, True, False),
    "phi": (tf.PhiConfig, tf.PhiForCausalLM, {}, True, False),
    "gemma3-sliding-window": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, {"head_dim": 16, "sliding_window": 5}, True,
                              False),
    "gemma2-softcap-fallback": (tf.Gemma2Config, tf.Gemma2ForCausalLM, {"head_dim": 16}, False, False),
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architectures_match_generate_on_their_path(arch):
    config_class, model_class, extra, batched, lean = ARCHITECTURES[arch]
    torch.manual_seed(0)
    config = config_class(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          initializer_range=0.2, **extra)
    model = model_class(config).eval()
    engine = HFEngine(model, FakeTokenizer(), EngineConfig(max_running=3, max_batched_tokens=8))
    assert engine.batched is batched
    assert (getattr(engine.runner, "fast_decoder", None) is not None) is lean
    gen = torch.Generator().manual_seed(0)
    prompts = {f"r{i}": torch.randint(3, 300, (3 + 4 * i,), generator=gen).tolist() for i in range(4)}
    got, _ = drive(engine, {0: {rid: (p, 8) for rid, p in prompts.items()}})
    for rid, prompt in prompts.items():
        assert got[rid] == reference(model, prompt, 8), rid
