"""Int4 decode weights (models/llm/cpu_int4.py): only weights that are already 4-bit are taken, they reproduce the
layer, small calls use them and large ones the layer's own path, and the engine on them matches HF generate."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.llm import cpu_int4
from models.llm.cpu_int4 import (SMALL_ROWS, Int4DecodeLinear, attach_int4, cached_lossless_int4, capture_lossless_int4,
                                 int4_supported, lossless_int4)
from models.llm.config import EngineConfig
from models.llm.engine import HFEngine
from models.llm.loader import load_causal_lm
from models.llm.types import SamplingParams
from tests.fixtures.tiny_llm import build_tiny_llm

pytestmark = pytest.mark.skipif(not int4_supported(), reason="this torch has no CPU int4 matmul")


def as_q4_1(weight: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Weights a Q4_1 GGUF dequantizes to: each group of 32 along a row is d * q + m, q in 0..15 (0 and 15 used)."""
    gen = torch.Generator().manual_seed(seed)
    n, k = weight.shape
    codes = torch.randint(0, 16, (n, k // 32, 32), generator=gen).float()
    codes[..., 0], codes[..., 1] = 0, 15
    d = torch.rand(n, k // 32, 1, generator=gen) * 0.02 + 1e-3
    m = -torch.rand(n, k // 32, 1, generator=gen) * 0.1
    return (codes * d + m).reshape(n, k)


def q4_linear(k: int, n: int, bias: bool = False) -> nn.Linear:
    layer = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(as_q4_1(layer.weight))
    return layer


def test_4bit_weights_are_taken_and_reproduce_the_layer_on_small_calls_only():
    layer = q4_linear(96, 48, bias=True)
    int4 = lossless_int4(layer.weight)
    assert int4 is not None
    wrapped = Int4DecodeLinear(layer, int4, torch.float32, layer.bias.detach())
    with torch.inference_mode():
        for rows in (1, 3, SMALL_ROWS):
            x = torch.randn(1, rows, 96)
            torch.testing.assert_close(wrapped(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        big = torch.randn(1, SMALL_ROWS + 1, 96)
        assert torch.equal(wrapped(big), layer(big))  # the layer's own path, bit for bit


def test_weights_that_are_not_4bit_are_left_alone():
    assert lossless_int4(torch.randn(16, 64)) is None  # ordinary float weights would be rounded: not taken
    assert lossless_int4(as_q4_1(torch.empty(16, 64))[:, :48]) is None  # rows not in whole groups of 32
    assert lossless_int4(as_q4_1(torch.empty(40, 64))) is None  # the kernel wants output features in 16s
    almost = as_q4_1(torch.empty(16, 64))
    almost[3, 7] += 1e-3  # one weight off its group's 16 levels
    assert lossless_int4(almost) is None


def test_capture_and_attach_wrap_exactly_the_4bit_layers():
    model = nn.Sequential(q4_linear(64, 32), nn.ReLU(), nn.Linear(32, 64), nn.ReLU(), q4_linear(64, 16))
    captured = capture_lossless_int4(model)
    assert set(captured) == {"0", "4"}
    x = torch.randn(2, 64)
    with torch.inference_mode():
        before = model(x)
        assert attach_int4(model, captured) == 2
        assert isinstance(model[0], Int4DecodeLinear) and type(model[2]) is nn.Linear
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_a_conversions_int4_weights_are_captured_once_then_read_back_equal(tmp_path, monkeypatch):
    model = nn.Sequential(q4_linear(64, 32), nn.ReLU(), nn.Linear(32, 64), nn.ReLU(), q4_linear(64, 16))
    first = cached_lossless_int4(model, str(tmp_path))
    (cache,) = [p for p in tmp_path.iterdir() if p.name.startswith("int4-torch-")]
    monkeypatch.setattr(cpu_int4, "capture_lossless_int4", lambda m: pytest.fail("captured again"))
    again = cached_lossless_int4(model, str(tmp_path))
    assert set(again) == set(first) == {"0", "4"}
    for name, w in first.items():
        assert torch.equal(again[name].packed, w.packed) and torch.equal(again[name].scales_zeros, w.scales_zeros)
        assert (again[name].out_features, again[name].in_features) == (w.out_features, w.in_features)
    cache.write_bytes(b"damaged")  # a damaged cache is captured again, not fatal
    monkeypatch.setattr(cpu_int4, "capture_lossless_int4", capture_lossless_int4)
    assert set(cached_lossless_int4(model, str(tmp_path))) == {"0", "4"}


def test_engine_on_int4_decode_weights_matches_generate_token_for_token(tmp_path):
    model, tok = load_causal_lm(build_tiny_llm(str(tmp_path / "m")), dtype="float32")
    with torch.no_grad():
        for i, layer in enumerate(m for m in model.modules() if type(m) is nn.Linear and m.in_features % 32 == 0):
            layer.weight.copy_(as_q4_1(layer.weight, seed=i))
    prompts = [[5, 6, 7, 8, 9], [30, 31, 32], [100, 7, 42, 42, 17, 3, 9]]
    references = []
    for prompt in prompts:
        ids = torch.tensor([prompt])  # [1, T]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                             eos_token_id=None, pad_token_id=0)  # [1, T + 12]
        references.append(out[0, len(prompt):].tolist())
    engine = HFEngine(model, tok, EngineConfig(max_running=4), int4_weights=capture_lossless_int4(model))
    assert engine.batched and engine.int4_linears == 2 * 7 + 1  # q, k, v, o, gate, up, down x 2 layers; lm_head
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    got: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
    assert [got[str(i)] for i in range(len(prompts))] == references
