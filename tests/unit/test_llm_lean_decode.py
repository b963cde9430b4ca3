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


class _Stream:
    """The EngineRequest fields the runner reads."""

    def __init__(self, tokens: list[int], slot: int):
        self.token_ids, self.num_computed, self.slot = list(tokens), 0, slot

    @property
    def num_pending(self) -> int:
        return len(self.token_ids) - self.num_computed

    def pending_tokens(self, count: int) -> list[int]:
        return self.token_ids[self.num_computed : self.num_computed + count]


def test_lean_decode_gives_the_transformers_forwards_logits_bit_for_bit(tiny_llama):
    runner = HFEngine(tiny_llama, FakeTokenizer(), EngineConfig(max_running=4)).runner
    lean = runner.fast_decoder
    streams = [_Stream(range(10 + i, 19 + 2 * i), slot) for i, slot in enumerate((0, 2, 3))]  # slot 1 left empty
    with torch.inference_mode():
        runner.execute([(s, s.num_pending) for s in streams])
        for s in streams:
            s.num_computed = len(s.token_ids)
            s.token_ids.append(7)
        runner.fast_decoder = None
        _, want = runner.execute([(s, 1) for s in streams])
        runner.fast_decoder = lean
        _, got = runner.execute([(s, 1) for s in streams])
    assert want.shape == got.shape == (3, 300) and torch.equal(got, want)
