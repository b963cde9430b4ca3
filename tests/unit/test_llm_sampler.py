"""Sampler: greedy, temperature/top-k/top-p, penalties, per-request seeded generators, raw logprobs."""
import math

import pytest
import torch

from models.llm.sampler import RequestSampler, apply_penalties, sample_next, sampling_probs
from models.llm.types import SamplingParams

V = 50


def logits_row(seed=0):
    return torch.randn(V, generator=torch.Generator().manual_seed(seed)) * 3  # [V]


def draw(params, steps=20, seed_logits=0):
    sampler = RequestSampler(params, V)
    logits = logits_row(seed_logits)[None]  # [1, V]
    return [sample_next(logits, [sampler])[0].token_id for _ in range(steps)]


def test_greedy_is_argmax_whatever_the_other_knobs():
    logits = torch.stack([logits_row(0), logits_row(1)])  # [2, V]
    samplers = [RequestSampler(SamplingParams(temperature=0.0, top_k=5, top_p=0.1), V) for _ in range(2)]
    got = [s.token_id for s in sample_next(logits, samplers)]
    assert got == logits.argmax(-1).tolist()


def test_same_seed_same_tokens_and_different_seeds_differ():
    a = draw(SamplingParams(temperature=1.0, seed=7))
    assert draw(SamplingParams(temperature=1.0, seed=7)) == a
    assert draw(SamplingParams(temperature=1.0, seed=8)) != a
    # unseeded: random. At temperature 3 two 20-token draws agree with probability ~1e-20 (at 1 the top token has
    # p = 0.97 and they agreed one run in four)
    assert draw(SamplingParams(temperature=3.0)) != draw(SamplingParams(temperature=3.0))


def test_each_row_uses_its_own_generator():
    alone = draw(SamplingParams(temperature=1.0, seed=3), steps=10)
    s, other = RequestSampler(SamplingParams(temperature=1.0, seed=3), V), RequestSampler(SamplingParams(), V)
    logits = torch.stack([logits_row(5), logits_row(0)])  # [2, V]: the seeded request is row 1 here
    together = [sample_next(logits, [other, s])[1].token_id for _ in range(10)]
    assert together == alone


def test_draws_follow_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.3]]))  # [1, 2]
    sampler = RequestSampler(SamplingParams(temperature=1.0, seed=0), 2)
    ones = sum(sample_next(logits, [sampler])[0].token_id for _ in range(2000))
    assert abs(ones / 2000 - 0.3) < 0.04


def test_temperature_top_k_and_top_p_shape_the_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))  # [4]
    assert torch.allclose(sampling_probs(logits, SamplingParams(temperature=0.5)), torch.softmax(logits / 0.5, -1))
    top_k = sampling_probs(logits, SamplingParams(top_k=2))
    assert torch.allclose(top_k, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    top_p = sampling_probs(logits, SamplingParams(top_p=0.7))  # 0.5 < 0.7 keeps the 2nd; 0.8 >= 0.7 drops the 3rd
    assert torch.allclose(top_p, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.allclose(sampling_probs(logits, SamplingParams(top_p=0.01)), torch.tensor([1.0, 0, 0, 0]))


def test_top_k_one_is_greedy_even_when_sampling():
    assert draw(SamplingParams(temperature=1.5, top_k=1, seed=1)) == [int(logits_row(0).argmax())] * 20


def test_presence_and_frequency_penalties_use_output_counts():
    params = SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25)
    sampler = RequestSampler(params, 4)
    for t in (1, 1, 2):
        sampler.record(t)
    out = apply_penalties(torch.zeros(1, 4), [sampler])  # [1, 4]
    assert out[0].tolist() == [0.0, -(0.5 + 2 * 0.25), -(0.5 + 0.25), 0.0]


def test_greedy_with_a_presence_penalty_avoids_repeating():
    logits = torch.tensor([[2.0, 1.5, 0.0]])  # [1, 3]
    sampler = RequestSampler(SamplingParams(temperature=0.0, presence_penalty=1.0), 3)
    assert [sample_next(logits, [sampler])[0].token_id for _ in range(3)] == [0, 1, 0]


def test_logprobs_are_raw_model_logprobs_with_sorted_alternatives():
    logits = logits_row(2)[None]  # [1, V]
    raw = torch.log_softmax(logits[0], -1)  # [V]
    params = SamplingParams(temperature=0.3, top_k=3, presence_penalty=1.0, seed=0, logprobs=True, top_logprobs=4)
    s = sample_next(logits, [RequestSampler(params, V)])[0]
    assert s.logprob == pytest.approx(float(raw[s.token_id]))
    assert [t for t, _ in s.top] == raw.topk(4).indices.tolist()
    assert [lp for _, lp in s.top] == pytest.approx(raw.topk(4).values.tolist())
    assert math.exp(s.top[0][1]) >= math.exp(s.top[-1][1])


def test_no_logprobs_unless_asked_and_zero_alternatives():
    logits = logits_row(0)[None]  # [1, V]
    assert sample_next(logits, [RequestSampler(SamplingParams(temperature=0), V)])[0].logprob is None
    s = sample_next(logits, [RequestSampler(SamplingParams(temperature=0, logprobs=True), V)])[0]
    assert s.logprob is not None and s.top == []


def test_rows_must_match_samplers():
    with pytest.raises(ValueError):
        sample_next(torch.zeros(2, V), [RequestSampler(SamplingParams(), V)])
