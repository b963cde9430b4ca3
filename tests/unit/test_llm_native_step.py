"""The whole decode step in one native call (models/llm/native_step.py, native/decode_step.c): the same logits and KV
as the lean decode loop over the same native layers (to the precision of bf16 between ops), for scattered slots,
different context lengths, GQA and a sliding window; larger steps and models it cannot compute keep the lean loop;
the step helper thread changes no bit."""
import copy

import pytest
import torch
from torch import nn

from models.llm.config import EngineConfig
from models.llm.cpu_native import MAX_ROWS, capture_native, load_kernels
from models.llm.engine import HFEngine
from models.llm.lean_decode import FastDecoder
from models.llm.loader import load_causal_lm
from models.llm.model_runner import BatchedModelRunner
from models.llm.native_step import NativeStepDecoder, build_native_step
from tests.fixtures.tiny_llm import build_tiny_llm
from tests.unit.test_llm_lean_decode import _Stream
from tests.unit.test_llm_native import as_q4_1_f16, as_q8_0, kernels, kernels_dir  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def engine(tmp_path_factory, kernels_dir, kernels):
    """The tiny Llama (4 query heads over 2 kv heads) with Q4_1 layers and a tied Q8_0 head, in bf16, on the native
    kernels: as a SmolLM2 GGUF loads."""
    model, tok = load_causal_lm(build_tiny_llm(str(tmp_path_factory.mktemp("m"))), dtype="float32")
    with torch.no_grad():
        for i, layer in enumerate(m for m in model.modules() if type(m) is nn.Linear and m.in_features % 64 == 0):
            layer.weight.copy_(as_q4_1_f16(layer.weight, seed=i))
        table = model.get_input_embeddings().weight
        table.copy_(as_q8_0(table, seed=99, scale=2e-4))
        model.get_output_embeddings().weight = table
    captured = capture_native(model)
    exact = copy.deepcopy(model)  # float32: the GGUF's dequantized weights exactly
    model.to(torch.bfloat16)
    engine = HFEngine(model, tok, EngineConfig(max_running=MAX_ROWS + 2), int4_weights=captured,
                      cache_dir=kernels_dir)
    engine.exact_model = exact
    return engine


def _run(model, decoder, prompts: dict[int, list[int]], steps: int, slots: int) -> tuple[list, BatchedModelRunner]:
    """Prefill each prompt (slot -> tokens), then `steps` decode steps of all of them, each feeding the token 7 + step;
    returns the logits [rows, V] of every decode step (rows in slot order) and the runner (its KV cache)."""
    runner = BatchedModelRunner(model, slots, 64, cuda_graphs=False, fast_decoder=decoder)
    streams = [_Stream(tokens, slot) for slot, tokens in prompts.items()]
    outputs = []
    with torch.inference_mode():
        runner.execute([(s, s.num_pending) for s in streams])
        for s in streams:
            s.num_computed = len(s.token_ids)
        for step in range(steps):
            for s in streams:
                s.token_ids.append(7 + step)
            sampled, logits = runner.execute([(s, 1) for s in streams])
            assert [s.slot for s in sampled] == sorted(prompts)
            outputs.append(logits.float())
            for s in streams:
                s.num_computed += 1
    return outputs, runner


def _close(got: torch.Tensor, want: torch.Tensor, tolerance: float) -> bool:
    return float((got - want).abs().max()) <= tolerance * float(want.abs().max())


def test_the_engine_takes_the_native_step(engine):
    native = engine.runner.fast_decoder
    assert isinstance(native, NativeStepDecoder)
    assert native.helper_bytes == {False: 0, True: 0}  # the helper thread only for the LM head, by default


def _exact_logits(model, prompts: dict[int, list[int]], steps: int) -> list[torch.Tensor]:
    """What _run's decode steps would give in float32 with the model's own forward: [rows, V] per step."""
    out = []
    with torch.inference_mode():
        for step in range(steps):
            rows = [model(torch.tensor([tokens + [7 + s for s in range(step + 1)]])).logits[0, -1]
                    for _, tokens in sorted(prompts.items())]
            out.append(torch.stack(rows))
    return out


def _error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(((got - want).abs().amax(-1) / want.abs().amax(-1)).max())  # worst row, relative to its range


@pytest.mark.parametrize("rows", [1, 3, MAX_ROWS])
def test_native_step_is_as_exact_as_the_lean_loop_and_writes_its_kv(engine, rows):
    """Scattered slots with contexts of different lengths: against the float32 forward on the same (dequantized)
    weights, the native step's logits are no further off than the lean loop's over the same kernels (which rounds to
    bf16 after every op; the native step keeps float32 between the matmuls), and the KV they write agrees."""
    native = engine.runner.fast_decoder
    slots = list(range(0, 2 * rows, 2))[:rows] if 2 * rows <= MAX_ROWS + 2 else list(range(rows))
    prompts = {slot: [(3 * slot + i) % 90 + 5 for i in range(4 + 3 * n)] for n, slot in enumerate(slots)}
    got, native_runner = _run(engine.model, native, prompts, steps=4, slots=MAX_ROWS + 2)
    lean, lean_runner = _run(engine.model, native.lean, prompts, steps=4, slots=MAX_ROWS + 2)
    exact = _exact_logits(engine.exact_model, prompts, steps=4)
    assert all(g.shape == w.shape == (rows, engine.vocab_size) for g, w in zip(got, lean))
    # The int8 activations of both paths cost this random tiny model 1-5% of its (flat) logits' range, growing with
    # the context; a wrong op costs more: with RMSNorm's mean off by 3%, one row's error was 2.4x the lean loop's.
    errors = {name: [_error(g, x) for g, x in zip(out, exact)] for name, out in (("native", got), ("lean", lean))}
    mean = {name: sum(steps) / len(steps) for name, steps in errors.items()}
    assert mean["native"] <= 1.25 * mean["lean"] + 5e-3, errors
    for layer in range(len(native.layers)):
        for mine, theirs in ((native_runner.cache.keys[layer], lean_runner.cache.keys[layer]),
                             (native_runner.cache.values[layer], lean_runner.cache.values[layer])):
            assert _close(mine.float(), theirs.float(), 3e-2)


def test_a_sliding_window_limits_what_the_native_step_reads(engine, kernels):
    """With a 5-token window on every layer, the native step agrees with the lean loop (which masks the same keys)
    as closely as without one, and differs from the unwindowed step: the window is honoured, not ignored."""
    model = engine.model
    lean = engine.runner.fast_decoder.lean
    plain = build_native_step(lean, kernels)
    prompts = {0: list(range(10, 22)), 1: list(range(30, 37))}
    try:
        for layer in model.model.layers:
            layer.self_attn.sliding_window = 5
        windowed = build_native_step(lean, kernels)
        want, _ = _run(model, lean, prompts, steps=2, slots=2)
        got, _ = _run(model, windowed, prompts, steps=2, slots=2)
    finally:
        for layer in model.model.layers:
            del layer.self_attn.sliding_window
    unwindowed, _ = _run(model, plain, prompts, steps=2, slots=2)
    for g, w, u in zip(got, want, unwindowed):
        assert _error(g, w) < 3e-2 < _error(u, w)


def test_larger_steps_keep_the_lean_loop(engine, monkeypatch):
    native = engine.runner.fast_decoder
    calls = []
    lean_step = FastDecoder.__call__

    def counting(self, input_ids, positions, batch):
        calls.append(input_ids.shape[0])
        return lean_step(self, input_ids, positions, batch)

    monkeypatch.setattr(FastDecoder, "__call__", counting)
    prompts = {slot: [5 + slot, 6, 7] for slot in range(MAX_ROWS + 1)}
    _run(engine.model, native, prompts, steps=1, slots=MAX_ROWS + 2)
    assert calls == [MAX_ROWS + 1]  # the one decode step of 9 rows went to the lean loop
    calls.clear()
    _run(engine.model, native, {0: [5, 6, 7]}, steps=1, slots=2)
    assert calls == []  # one row: native


def test_a_model_it_cannot_compute_gets_no_native_step(engine, kernels, caplog):
    model = engine.model
    lean = engine.runner.fast_decoder.lean
    assert build_native_step(lean, kernels) is not None
    mlp, attn = model.model.layers[1].mlp, model.model.layers[0].self_attn
    act, o_proj = mlp.act_fn, attn.o_proj
    try:
        mlp.act_fn = nn.GELU()
        with caplog.at_level("INFO", logger="models.llm.native_step"):
            assert build_native_step(lean, kernels) is None
        assert "not SiLU" in caplog.text
        mlp.act_fn = act
        attn.o_proj = o_proj.large  # one layer off the native kernels
        assert build_native_step(lean, kernels) is None
    finally:
        mlp.act_fn, attn.o_proj = act, o_proj
    assert build_native_step(lean, None) is None


def test_the_step_helper_changes_no_bit(engine, kernels):
    native = engine.runner.fast_decoder
    prompts = {0: [5, 6, 7, 8], 2: [9, 10]}
    saved = dict(native.helper_bytes)
    try:
        native.helper_bytes = {False: 0, True: 0}
        alone, _ = _run(engine.model, native, prompts, steps=3, slots=3)
        native.helper_bytes = {False: 1, True: 1}  # every matmul of every step splits
        for _ in range(5):  # many steps: a lost wake-up or a race would hang or differ
            split, _ = _run(engine.model, native, prompts, steps=3, slots=3)
            assert all(torch.equal(a, b) for a, b in zip(alone, split))
    finally:
        native.helper_bytes = saved


def test_a_position_outside_the_cache_is_refused_before_anything_is_written(engine):
    native = engine.runner.fast_decoder
    prompts = {0: [5, 6, 7]}
    _, runner = _run(engine.model, native, prompts, steps=1, slots=2)
    before = [t.clone() for t in (*runner.cache.keys, *runner.cache.values)]
    batch = type("Batch", (), {"cache": runner.cache, "attention_calls": 0,
                               "write_slots": torch.tensor([0]), "write_positions": torch.tensor([64])})()
    with torch.inference_mode(), pytest.raises(IndexError, match="outside the KV cache"):
        native(torch.tensor([5]), torch.tensor([63]), batch)  # slot_len 64: position 64 does not exist
    batch.write_slots, batch.write_positions = torch.tensor([2]), torch.tensor([3])  # 2 slots: slot 2 does not
    with torch.inference_mode(), pytest.raises(IndexError):
        native(torch.tensor([5]), torch.tensor([3]), batch)
    assert all(torch.equal(a, b) for a, b in zip(before, (*runner.cache.keys, *runner.cache.values)))
