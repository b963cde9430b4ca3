"""The lean decode path (models/llm/lean_decode.py): kept only when its load-time probe agrees with the model."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from models.llm import lean_decode
from models.llm.config import EngineConfig
from models.llm.engine import HFEngine
from models.llm.fake import FakeTokenizer
from models.llm.types import SamplingParams


@pytest.fixture()
def tiny_llama():
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            initializer_range=0.2)
    return tf.LlamaForCausalLM(config).eval()


def test_a_lean_decoder_that_disagrees_with_the_model_is_refused_and_decoding_stays_exact(tiny_llama, monkeypatch,
                                                                                         caplog):
    def without_mlp(self, layer, index, h, cos, sin, batch):  # a plausible bug: one sub-layer left out
        return h

    monkeypatch.setattr(lean_decode.FastDecoder, "_layer_step", without_mlp)
    engine = HFEngine(tiny_llama, FakeTokenizer(), EngineConfig(max_running=2))
    assert engine.batched and engine.runner.fast_decoder is None
    assert "lean decode path disagrees" in caplog.text
    prompt = [5, 17, 42, 9]
    engine.add_request("r", prompt, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    tokens = []
    while engine.has_unfinished_requests():
        tokens += [t for out in engine.step() for t in out.new_token_ids]
    ids = torch.tensor([prompt])
    want = tiny_llama.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                               eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert tokens == want


def test_lean_decode_can_be_turned_off(tiny_llama):
    assert HFEngine(tiny_llama, FakeTokenizer(), EngineConfig(max_running=2)).runner.fast_decoder is not None
    engine = HFEngine(tiny_llama, FakeTokenizer(), EngineConfig(max_running=2, lean_decode=False))
    assert engine.runner.fast_decoder is None
