"""Native decode matmuls (models/llm/cpu_native.py): only weights that are exactly 4- or 8-bit blocks are taken, the
kernels match float64 within the error of their int8 activations, a helper thread changes no bit, the weights cache
round-trips, and every failure to build leaves PyTorch's kernels in charge."""
import logging

import pytest
import torch
from torch import nn

from models.llm import cpu_native
from models.llm.config import EngineConfig
from models.llm.cpu_native import (MAX_ROWS, NativeDecodeLinear, NativeEmbedding, attach_native, cached_native,
                                   capture_native, fuse, load_kernels, native_q4, native_q8, share_embedding)
from models.llm.engine import HFEngine
from models.llm.loader import load_causal_lm
from models.llm.types import SamplingParams
from tests.fixtures.tiny_llm import build_tiny_llm
from tests.unit.test_llm_int4 import as_q4_1


def as_q8_0(weight: torch.Tensor, seed: int = 0, scale: float = 0.02) -> torch.Tensor:
    """Weights a Q8_0 GGUF dequantizes to: each block of 32 along a row is d * q, fp16 d, q in -127..127."""
    gen = torch.Generator().manual_seed(seed)
    n, k = weight.shape
    codes = torch.randint(-127, 128, (n, k // 32, 32), generator=gen).float()
    codes[..., 0] = 127  # the block's largest magnitude maps to 127, as the quantizer makes it
    d = (torch.rand(n, k // 32, 1, generator=gen) * scale + scale / 20).half().float()
    return (codes * d).reshape(n, k)


def as_q4_1_f16(weight: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """as_q4_1 with fp16 d and m, as a GGUF stores them."""
    gen = torch.Generator().manual_seed(seed)
    n, k = weight.shape
    codes = torch.randint(0, 16, (n, k // 32, 32), generator=gen).float()
    codes[..., 0], codes[..., 1] = 0, 15
    d = (torch.rand(n, k // 32, 1, generator=gen) * 0.02 + 1e-3).half().float()
    m = (-torch.rand(n, k // 32, 1, generator=gen) * 0.1).half().float()
    return (codes * d + m).reshape(n, k)


@pytest.fixture(scope="module")
def kernels_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("native"))


@pytest.fixture(scope="module")
def kernels(kernels_dir):
    built = load_kernels(kernels_dir)
    if built is None:
        pytest.skip("native decode kernels do not build or run here (no AVX-512 VNNI or no C compiler)")
    return built


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm())


def test_only_exact_4_and_8_bit_blocks_are_taken():
    w4, w8 = as_q4_1_f16(torch.empty(32, 128)), as_q8_0(torch.empty(32, 128))
    assert native_q4(w4).bits == 4 and native_q4(w8) is None
    assert native_q8(w8).bits == 8 and native_q8(torch.randn(32, 128)) is None
    assert native_q4(torch.randn(32, 128)) is None  # ordinary float weights would be rounded: not taken
    assert native_q4(as_q4_1_f16(torch.empty(32, 96))) is None  # K not in whole pairs of blocks (64)
    w4_f32 = as_q4_1(torch.empty(32, 128))  # d and m that are not fp16 values: the fp16 form would round them
    assert native_q4(w4_f32) is None


@pytest.mark.parametrize("rows", [1, 2, 5, MAX_ROWS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_match_float64_within_int8_activation_error(kernels, rows, dtype):
    gen = torch.Generator().manual_seed(rows)
    for w in (as_q4_1_f16(torch.empty(80, 192), seed=rows), as_q8_0(torch.empty(80, 192), seed=rows)):
        native = native_q4(w) or native_q8(w)
        x = torch.randn(rows, 192, generator=gen).to(dtype)
        out = torch.empty(rows, 80, dtype=dtype)
        kernels.matmul(native, x, out, kernels.scratch(192))
        want = x.double() @ w.double().T
        # int8 activations per block of 32: ~0.5% relative; bf16 output rounding adds ~0.2%
        assert relative_error(out, want) < 1.5e-2
        # and not merely small: the error is that of quantizing x, so exact int8 inputs give float32 accuracy
        xq = torch.randint(-127, 128, (rows, 192), generator=gen).float()
        xq[:, ::32] = 127  # each block's scale is then exactly 1: the int8 values are x itself
        exact = torch.empty(rows, 80)
        kernels.matmul(native, xq, exact, kernels.scratch(192))
        assert relative_error(exact, xq.double() @ w.double().T) < 1e-5


def test_helper_thread_changes_no_bit(kernels):
    w = as_q4_1_f16(torch.empty(4096, 256))
    native = native_q4(w)
    x = torch.randn(3, 256).to(torch.bfloat16)
    alone, split = torch.empty(3, 4096, dtype=torch.bfloat16), torch.empty(3, 4096, dtype=torch.bfloat16)
    try:
        kernels.use_helper_thread(0)
        kernels.matmul(native, x, alone, kernels.scratch(256))
        assert kernels.use_helper_thread(1)  # every call splits
        for _ in range(20):  # many hand-offs: a lost wake-up or a race would hang or differ
            kernels.matmul(native, x, split, kernels.scratch(256))
            assert torch.equal(split, alone)
    finally:
        kernels.use_helper_thread(0)


def test_layer_uses_the_kernel_on_small_calls_and_its_own_path_on_large_ones(kernels):
    layer = nn.Linear(128, 48, bias=False)
    with torch.no_grad():
        layer.weight.copy_(as_q4_1_f16(layer.weight))
    wrapped = NativeDecodeLinear(layer, native_q4(layer.weight), kernels)
    with torch.inference_mode():
        small = torch.randn(2, 3, 128)
        assert relative_error(wrapped(small), layer(small).double()) < 1.5e-2
        assert wrapped(small).shape == (2, 3, 48)
        big = torch.randn(1, MAX_ROWS + 1, 128)
        assert torch.equal(wrapped(big), layer(big))  # the layer's own path, bit for bit


def test_fused_layers_give_each_layers_output_bit_for_bit_and_store_nothing_twice(kernels):
    layers = []
    for i, n in enumerate((96, 32, 32)):  # q, k, v of a small attention
        linear = nn.Linear(128, n, bias=False)
        with torch.no_grad():
            linear.weight.copy_(as_q4_1_f16(linear.weight, seed=i))
        layers.append(NativeDecodeLinear(linear, native_q4(linear.weight), kernels))
    x = torch.randn(3, 128).to(torch.bfloat16)
    with torch.inference_mode():
        alone = [layer(x) for layer in layers]
        fused = fuse(*layers)
        together = fused(x)
        assert all(torch.equal(a, b) for a, b in zip(alone, together))
        assert all(torch.equal(layer(x), a) for layer, a in zip(layers, alone))  # the layers still work alone
    storage = fused.weight.qs.untyped_storage().data_ptr()
    assert all(layer.weight.qs.untyped_storage().data_ptr() == storage for layer in layers)  # views of one copy
    assert fuse(layers[0], nn.Linear(128, 8)) is None  # not all native: nothing fused


def test_capture_and_cache_take_exactly_the_block_layers(kernels, tmp_path):
    model = nn.Sequential(nn.Linear(128, 64, bias=False), nn.ReLU(), nn.Linear(64, 64, bias=False),
                          nn.Linear(64, 256, bias=False), nn.Linear(128, 64, bias=True))
    with torch.no_grad():
        model[0].weight.copy_(as_q4_1_f16(model[0].weight))
        model[3].weight.copy_(as_q8_0(model[3].weight))
        model[4].weight.copy_(as_q4_1_f16(model[4].weight))  # has a bias: left to its own path
    captured = capture_native(model)
    assert {name: w.bits for name, w in captured.items()} == {"0": 4, "3": 8}
    first = cached_native(model, str(tmp_path))
    again = cached_native(nn.Sequential(), str(tmp_path))  # read from the file, not captured (no layers here)
    assert set(again) == set(first) == {"0", "3"}
    for name, w in first.items():
        assert torch.equal(again[name].qs, w.qs) and torch.equal(again[name].d, w.d)
        assert (again[name].bits, again[name].out_features, again[name].in_features) == (w.bits, 64 if name == "0"
                                                                                           else 256, w.in_features)
    (tmp_path / "native-v1.safetensors").write_bytes(b"damaged")
    assert set(cached_native(model, str(tmp_path))) == {"0", "3"}  # captured again, never fatal
    with torch.inference_mode():
        assert attach_native(model, captured, kernels) == 2
    assert isinstance(model[0], NativeDecodeLinear) and type(model[2]) is nn.Linear


def test_engine_on_native_weights_matches_generate_on_the_same_layers(kernels_dir, tmp_path):
    """Q4_1 layers and a Q8_0 LM head tied to the embedding, in bf16: the engine (native layers, the embedding read
    from the head's 8-bit weights, its bf16 table freed) generates what HF generate does on the same native layers
    with the model's own embedding."""
    import copy

    model, tok = load_causal_lm(build_tiny_llm(str(tmp_path / "m")), dtype="float32")
    with torch.no_grad():
        for i, layer in enumerate(m for m in model.modules() if type(m) is nn.Linear and m.in_features % 64 == 0):
            layer.weight.copy_(as_q4_1_f16(layer.weight, seed=i))
        table = model.get_input_embeddings().weight
        table.copy_(as_q8_0(table, seed=99, scale=2e-4))  # entries up to ~0.03, as embeddings are
        model.get_output_embeddings().weight = table  # tied, as SmolLM2's
    captured = capture_native(model)
    assert captured["lm_head"].bits == 8 and sum(w.bits == 4 for w in captured.values()) == len(captured) - 1
    model.to(torch.bfloat16)
    reference_model = copy.deepcopy(model)
    bf16_table = model.get_input_embeddings().weight.detach().clone()
    prompts = [[5, 6, 7, 8, 9], [30, 31, 32]]
    with torch.inference_mode():
        ids = torch.tensor([prompts[0]])  # [1, T]
        own = reference_model(ids).logits[0, -1].double()  # the model's own bf16 forward
        assert attach_native(reference_model, captured, load_kernels(kernels_dir)) == len(captured)
        native = reference_model(ids).logits[0, -1]  # 5 rows: every wrapped layer on the kernel
        assert relative_error(native, own) < 3e-2
        references = []
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = reference_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=10, eos_token_id=None, pad_token_id=0)  # [1, T + 10]
            references.append(out[0, len(prompt):].tolist())
    engine = HFEngine(model, tok, EngineConfig(max_running=2), int4_weights=captured, cache_dir=kernels_dir)
    assert engine.int4_linears == len(captured)
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, NativeEmbedding)
    with torch.inference_mode():
        every = torch.arange(bf16_table.shape[0])
        assert torch.equal(embedding(every), bf16_table)  # bit for bit
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    got: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
    assert [got[str(i)] for i in range(len(prompts))] == references


def test_an_embedding_that_is_not_the_heads_table_is_kept(kernels):
    model = nn.Module()
    model.embed, model.head = nn.Embedding(128, 64), nn.Linear(64, 128, bias=False)
    model.get_input_embeddings = lambda: model.embed
    model.get_output_embeddings = lambda: model.head
    model.set_input_embeddings = lambda e: pytest.fail("replaced an embedding that differs from the head")
    with torch.no_grad():
        model.head.weight.copy_(as_q8_0(model.head.weight))
        model.embed.weight.copy_(as_q8_0(model.head.weight, seed=5))  # also 8-bit blocks, but another table
    head = native_q8(model.head.weight)
    model.to(torch.bfloat16)
    model.head = NativeDecodeLinear(model.head, head, kernels)
    assert share_embedding(model) is False


def test_without_the_kernels_nothing_is_built_and_the_reason_is_logged(monkeypatch, tmp_path, caplog):
    load_kernels.cache_clear()
    try:
        monkeypatch.setenv("OPENSERVE_NATIVE_DECODE", "0")
        assert load_kernels(str(tmp_path / "a")) is None
        monkeypatch.delenv("OPENSERVE_NATIVE_DECODE")
        monkeypatch.setattr(cpu_native, "cpu_supported", lambda: False)
        assert load_kernels(str(tmp_path / "b")) is None
        monkeypatch.setattr(cpu_native, "cpu_supported", lambda: True)
        monkeypatch.setenv("CC", "false")  # a compiler that fails
        monkeypatch.setattr(cpu_native, "_compiler", lambda: "/bin/false")
        with caplog.at_level(logging.WARNING, logger="models.llm.cpu_native"):
            assert load_kernels(str(tmp_path / "c")) is None
        assert "decoding on PyTorch's kernels" in caplog.text
        assert not list((tmp_path / "c" / "native").glob("*"))  # no half-written library left behind
    finally:
        load_kernels.cache_clear()
