"""Compiled decode (models/llm/compiled_decode.py): the engine switches to it once compiled, gives HF generate's greedy
tokens with requests joining and leaving, keeps its artefacts on disk, and stays eager when compiling fails."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from models.llm import compiled_decode
from models.llm.compiled_decode import CompiledDecoder
from models.llm.config import EngineConfig
from models.llm.cpu_int4 import capture_lossless_int4, int4_supported
from models.llm.engine import HFEngine
from models.llm.lean_decode import FastDecoder
from models.llm.loader import load_causal_lm
from tests.fixtures.tiny_llm import build_tiny_llm
from tests.unit.test_llm_batching import drive, poison, reference
from tests.unit.test_llm_int4 import as_q4_1

pytestmark = pytest.mark.skipif(not int4_supported(), reason="this torch has no CPU int4 matmul")

COMPILE_DEADLINE_S = 600  # a cold inductor compile on a loaded 2-core box; a warm one takes seconds


@pytest.fixture(scope="module")
def q4_model(tmp_path_factory):
    """The tiny Llama (float32) with every linear weight exactly 4-bit, as a Q4_1 GGUF dequantizes."""
    model, tok = load_causal_lm(build_tiny_llm(str(tmp_path_factory.mktemp("tiny_q4"))), dtype="float32")
    with torch.no_grad():
        for i, layer in enumerate(m for m in model.modules() if type(m) is nn.Linear and m.in_features % 32 == 0):
            layer.weight.copy_(as_q4_1(layer.weight, seed=i))
    return model, tok


def engine_on(q4_model, **options) -> HFEngine:
    model, tok = q4_model
    config = EngineConfig(max_running=4, max_batched_tokens=16, **options)
    return HFEngine(model, tok, config, int4_weights=capture_lossless_int4(model))


def test_compiled_decode_matches_generate_token_for_token_with_requests_joining_and_leaving(q4_model, request,
                                                                                            monkeypatch):
    # pytest's cache folder outlives the run: the first run compiles cold (~1 min here), later ones in seconds.
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    folder = cache.mkdir("inductor") if cache is not None else request.getfixturevalue("tmp_path") / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
    engine = engine_on(q4_model, compiled_decode=True)
    decoder = engine.runner.fast_decoder
    assert isinstance(decoder, CompiledDecoder)
    assert decoder.wait(COMPILE_DEADLINE_S), decoder.compile_error
    assert any(files for _, _, files in os.walk(folder))  # artefacts on disk for the next start
    poison(engine)
    gen = torch.Generator().manual_seed(3)
    plan = {}
    for i in range(8):  # prompts of 2..30 tokens, 3..12 new tokens, joining over the first 12 steps
        prompt = torch.randint(3, 200, (2 + (i * 9) % 29,), generator=gen).tolist()
        plan.setdefault((i * 3) % 12, {})[f"r{i}"] = (prompt, 3 + (i * 5) % 10)
    got, _ = drive(engine, plan)
    model = q4_model[0]
    for joins in plan.values():
        for rid, (prompt, n) in joins.items():
            assert got[rid] == reference(model, prompt, n), rid
    assert decoder.compiled_steps > 0 and not engine.has_unfinished_requests()


def test_compiled_decode_is_off_unless_asked_for(q4_model):
    assert type(engine_on(q4_model).runner.fast_decoder) is FastDecoder
    assert type(engine_on(q4_model, compiled_decode=False).runner.fast_decoder) is FastDecoder


def test_regions_that_disagree_with_eager_are_refused_and_decoding_stays_eager(q4_model, monkeypatch):
    class Wrong:  # a plausible bug: the bridge drops the MLP's residual branch
        def __init__(self, regions):
            self.qkv, self.finish = regions.qkv, regions.finish
            self.bridge = lambda h, attn, o, *rest: regions.bridge(h, attn, o, *rest)[:1] + regions.bridge(
                h * 0.5, attn, o, *rest)[1:]

    monkeypatch.setattr(compiled_decode, "_Compiled", Wrong)
    engine = engine_on(q4_model, compiled_decode=True)
    decoder = engine.runner.fast_decoder
    assert not decoder.wait(COMPILE_DEADLINE_S)
    assert "differ from eager" in decoder.compile_error
    got, _ = drive(engine, {0: {"a": ([5, 6, 7, 8], 5)}})
    assert got["a"] == reference(q4_model[0], [5, 6, 7, 8], 5) and decoder.compiled_steps == 0
