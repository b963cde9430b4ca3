"""Decode attention split by context length: runs of slots each read keys up to their own longest context, and
outputs stay token-for-token those of HF `generate` (NaN-poisoned cache)."""
import torch

from models.llm import attention
from models.llm.attention import split_by_length
from models.llm.config import EngineConfig
from models.llm.engine import HFEngine
from tests.unit.test_llm_batching import drive, loaded, poison, reference  # noqa: F401 - `loaded` is a fixture


def cost(segments):
    return sum((end - start) * length for start, end, length in segments)


def test_one_long_context_costs_its_own_rows_only(monkeypatch):
    lens = [200] * 7 + [4000] + [180] * 8
    segments = split_by_length(lens)
    assert [s[:2] for s in segments] == [(0, 7), (7, 8), (8, 16)] and [s[2] for s in segments] == [200, 4000, 180]
    assert cost(segments) == 7 * 200 + 4000 + 8 * 180  # vs 16 x 4000 in one call
    assert split_by_length([300] * 16) == [(0, 16, 300)]  # nothing to save: one call
    assert split_by_length([100, 0, 120]) == [(0, 3, 120)]  # under MIN_SPLIT_SAVING: one call
    assert len(split_by_length([70] * 8 + [2002] + [70] * 7)) == 3  # no single cut pays, the two together do
    assert split_by_length([]) == [(0, 0, 0)]
    monkeypatch.setattr(attention, "MIN_SPLIT_SAVING", 1)
    assert len(split_by_length([5, 50, 5, 50, 5], max_segments=3)) == 3  # bounded, however uneven


def test_split_decode_matches_generate(loaded, monkeypatch):  # noqa: F811
    model, tok = loaded
    monkeypatch.setattr(attention, "MIN_SPLIT_SAVING", 8)  # tiny contexts: split as a long one would
    seen = []
    real = attention.split_by_length
    monkeypatch.setattr("models.llm.model_runner.split_by_length", lambda lens: seen.append(real(lens)) or seen[-1])
    engine = HFEngine(model, tok, EngineConfig(max_running=4, max_batched_tokens=64, prefix_caching=False))
    poison(engine)
    gen = torch.Generator().manual_seed(5)
    prompts = {"short0": 3, "long": 60, "short1": 4, "short2": 2}  # slots 0..3: the long one in the middle
    prompts = {rid: torch.randint(3, len(tok), (n,), generator=gen).tolist() for rid, n in prompts.items()}
    got, _ = drive(engine, {0: {rid: (p, 10) for rid, p in prompts.items()}})
    for rid, prompt in prompts.items():
        assert got[rid] == reference(model, prompt, 10), rid
    assert any(len(s) > 1 for s in seen)  # the decode steps were split
