"""BatchSampler: greedy, temperature/top-k/top-p, penalties, logit_bias, token masks, per-request counter-based
seeds that make a row's draws independent of its neighbours, raw logprobs."""
import math
import secrets
from dataclasses import dataclass

import pytest
import torch

from models.llm.constraints import TokenMask
from models.llm.draw import RACE_BLOCK, Race, counter_uniform, race, row_keys
from models.llm.sampler import TOP_P_CANDIDATES, BatchSampler, _best_first, filtered_weights, nucleus, sampling_probs
from models.llm.types import SamplingParams

V = 50


@dataclass(eq=False)
class Row:
    """The fields the sampler reads from a request (models.llm.sampler.SamplingRow)."""

    params: SamplingParams
    slot: int = 0
    constraint: TokenMask | None = None

    def __post_init__(self):
        seed = self.params.seed
        self.seed = seed % 2**64 if seed is not None else secrets.randbits(64)


def logits_row(seed=0):
    return torch.randn(V, generator=torch.Generator().manual_seed(seed)) * 3  # [V]


def draw(params, steps=20, seed_logits=0, slot=0, rows=4):
    sampler, row = BatchSampler(rows, V), Row(params, slot)
    logits = logits_row(seed_logits)[None]  # [1, V]
    return [sampler.sample(logits, [row])[0].token_id for _ in range(steps)]


def test_counter_uniform_is_splitmix64():
    def splitmix64(state):  # the reference: Vigna's splitmix64, first output after seeding with `state`
        mask = 2**64 - 1
        z = (state + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    assert splitmix64(0) == 0xE220A8397B1DCDAF  # the published first output for seed 0
    seeds = [0, 1, 2**63 - 1, -(2**63), -1, 123456789]
    counters = [0, 1, 7, 1000, 2**40, 3]
    got = counter_uniform(torch.tensor(seeds), torch.tensor(counters)).tolist()
    for seed, n, u in zip(seeds, counters, got):
        state = (seed + n * 0x9E3779B97F4A7C15) % 2**64  # the (n + 1)-th output is the first from state + n * gamma
        assert u == ((splitmix64(state) >> 11) + 0.5) * 2.0**-53 and 0.0 < u < 1.0


@pytest.mark.parametrize("vocab", [5, RACE_BLOCK, RACE_BLOCK + 70, 3 * RACE_BLOCK])
def test_the_two_level_race_draws_in_proportion_and_never_a_zero(vocab):
    rows = 20_000
    where = sorted({0, 1, vocab // 2, vocab - 2, vocab - 1, min(RACE_BLOCK, vocab - 1)})  # across and within blocks
    probs = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.07, 0.03][: len(where)])
    weights = torch.zeros(rows, vocab)
    weights[:, where] = probs * 7.0  # rows need not sum to 1
    picked = race(weights, row_keys(torch.arange(rows), torch.zeros(rows, dtype=torch.long)))
    counts = torch.bincount(picked, minlength=vocab)
    assert set(torch.nonzero(counts)[:, 0].tolist()) <= set(where)  # never an entry of weight 0
    expected = probs / probs.sum()
    assert torch.allclose(counts[where] / rows, expected, atol=0.015)  # > 4.5 standard deviations


def test_a_race_keeps_its_winner_when_the_weights_move_a_little():
    """bf16 logits move by ~0.03 when the batch around a request changes (SmolLM2's first-token logprobs, one
    request prefilled alone or beside another's decode); a seeded draw should rarely move with them."""
    rows, vocab = 400, 4096
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, vocab, generator=gen)  # flat: thousands of comparable candidates
    moved = logits + 0.03 * torch.randn(rows, vocab, generator=gen)
    keys = row_keys(torch.arange(rows), torch.zeros(rows, dtype=torch.long))
    changed = (race(logits.softmax(-1), keys) != race(moved.softmax(-1), keys)).float().mean()
    assert changed < 0.05
    u = counter_uniform(torch.arange(rows), torch.zeros(rows, dtype=torch.long))  # the same draws by inverse CDF
    position = [torch.searchsorted(x.softmax(-1).double().cumsum(-1), u[:, None])[:, 0] for x in (logits, moved)]
    assert (position[0] != position[1]).float().mean() > 0.3  # why the sampler races (here: 0.02 vs 0.475)


@pytest.mark.parametrize("vocab", [5, RACE_BLOCK, RACE_BLOCK + 70, 49_152])
def test_the_two_level_argmax_is_torchs_first_maximum_ties_and_nans_included(vocab):
    gen = torch.Generator().manual_seed(vocab)
    x = torch.randn(12, vocab, generator=gen)
    x[:4] = x[:4].round()  # many ties: the first of them wins
    x[4, vocab // 3] = x[4, vocab - 1] = float("nan")  # NaN counts as the largest, the first one wins
    x[5] = float("-inf")
    x[6] = 7.0  # all equal
    assert torch.equal(Race(vocab).argmax(x), x.argmax(-1))


def nucleus_cases(vocab=16_384):
    """Weights [16, V] whose nuclei end among the first candidates, the second, neither (flat), with ties (bf16)."""
    gen = torch.Generator().manual_seed(0)
    scales = (12.0, 4.0, 0.3, 3.0)  # peaked to flat, then bf16 logits
    x = torch.cat([torch.randn(4, vocab, generator=gen) * scale for scale in scales])
    x[12:] = x[12:].bfloat16().float()
    return (x - x.amax(-1, keepdim=True)).exp(), torch.tensor([0.9, 0.5, 1.0, 0.99] * 4)


def test_top_p_on_the_heaviest_candidates_is_the_full_sort_exactly():
    weights, top_p = nucleus_cases()
    widths = []
    for rows in [slice(i, i + 1) for i in range(16)] + [slice(0, 8), slice(0, 16)]:
        w, p = weights[rows], top_p[rows]
        assert torch.equal(nucleus(w.clone(), p, host_reads=True), nucleus(w.clone(), p, host_reads=False))
        limit = p[:, None] * w.sum(-1, keepdim=True)
        widths.append(_best_first(w, limit, p < 1.0, host_reads=True).shape[1])
    vocab = weights.shape[1]
    assert widths[0] == widths[4] == TOP_P_CANDIDATES and widths[8] == widths[-1] == vocab  # peaked; flat: sorted
    assert (nucleus(weights.clone(), top_p) > 0).sum(-1)[top_p == 1.0].eq(weights.shape[1]).all()


def test_top_k_and_top_p_pick_the_same_tokens_on_the_host_as_on_a_device():
    weights, top_p = nucleus_cases()
    x = weights.log()  # logits with ties (the bf16 rows) and -inf nowhere
    temperature, top_k = torch.full((16,), 0.7), torch.tensor([1, 5, 40, 16_384] * 4)
    on = [filtered_weights(x, temperature, top_k, 40, top_p, host_reads=reads) for reads in (True, False)]
    assert torch.equal(on[0], on[1]) and ((on[0] > 0).sum(-1)[top_k == 1] == 1).all()


def test_top_p_keeps_exactly_the_smallest_prefix_reaching_the_mass_and_whole_ties():
    weights = torch.tensor([[4.0, 1.0, 2.0, 2.0, 1.0]])  # mass 10: 4 (0) then 2, 2 (4, 6 before) then 1, 1 (8, 9)
    assert nucleus(weights.clone(), torch.tensor([0.45])).tolist() == [[4.0, 0.0, 2.0, 2.0, 0.0]]  # a tie stays
    assert nucleus(weights.clone(), torch.tensor([0.4])).tolist() == [[4.0, 0.0, 0.0, 0.0, 0.0]]
    assert nucleus(weights.clone(), torch.tensor([0.81])).tolist() == [[4.0, 1.0, 2.0, 2.0, 1.0]]


def test_fast_top_p_draws_in_proportion_over_a_real_vocabulary():
    vocab, rows = 8_192, 4_000
    logits = torch.full((rows, vocab), -30.0)
    logits[:, [5, 300, 4_000, 8_191]] = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))  # nucleus 0.8: 3 kept
    weights = filtered_weights(logits, torch.ones(rows), None, 0, torch.full((rows,), 0.8), host_reads=True)
    picked = Race(vocab)(weights, row_keys(torch.arange(rows), torch.zeros(rows, dtype=torch.long)))
    counts = torch.bincount(picked, minlength=vocab)
    assert set(torch.nonzero(counts)[:, 0].tolist()) == {5, 300, 4_000}
    assert torch.allclose(counts[[5, 300, 4_000]] / rows, torch.tensor([0.5, 0.25, 0.15]) / 0.9, atol=0.03)


def test_greedy_is_argmax_whatever_the_other_knobs():
    logits = torch.stack([logits_row(0), logits_row(1)])  # [2, V]
    rows = [Row(SamplingParams(temperature=0.0, top_k=5, top_p=0.1), slot=i) for i in range(2)]
    got = [s.token_id for s in BatchSampler(2, V).sample(logits, rows)]
    assert got == logits.argmax(-1).tolist()


def test_same_seed_same_tokens_and_different_seeds_differ():
    a = draw(SamplingParams(temperature=1.0, seed=7))
    assert draw(SamplingParams(temperature=1.0, seed=7)) == a
    assert draw(SamplingParams(temperature=1.0, seed=7), slot=3) == a  # the row a request sits in does not matter
    assert draw(SamplingParams(temperature=1.0, seed=8)) != a
    # unseeded: random. At temperature 3 two 20-token draws agree with probability ~1e-20
    assert draw(SamplingParams(temperature=3.0)) != draw(SamplingParams(temperature=3.0))


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63), -5, 2**63])
def test_seeds_anywhere_in_the_64_bit_range_are_reproducible(seed):
    a = draw(SamplingParams(temperature=2.0, seed=seed))
    assert draw(SamplingParams(temperature=2.0, seed=seed)) == a
    assert draw(SamplingParams(temperature=2.0, seed=seed % 2**64)) == a  # a negative seed is its 64 bits


def test_each_row_draws_from_its_own_seed_whatever_its_neighbours():
    alone = draw(SamplingParams(temperature=1.0, seed=3), steps=10)
    sampler = BatchSampler(4, V)
    seeded, other = Row(SamplingParams(temperature=1.0, seed=3), slot=2), Row(SamplingParams(top_p=0.5), slot=0)
    greedy = Row(SamplingParams(temperature=0.0), slot=1)
    logits = torch.stack([logits_row(5), logits_row(0), logits_row(7)])  # [3, V]: the seeded request is row 1
    together = [sampler.sample(logits, [other, seeded, greedy])[1].token_id for _ in range(10)]
    assert together == alone


def test_draws_follow_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.3]]))  # [1, 2]
    sampler, row = BatchSampler(1, 2), Row(SamplingParams(temperature=1.0, seed=0))
    ones = sum(sampler.sample(logits, [row])[0].token_id for _ in range(1000))
    assert abs(ones / 1000 - 0.3) < 0.05  # 3.5 standard deviations


def test_top_p_draws_stay_in_the_nucleus_in_proportion():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))  # [1, 4]
    sampler, row = BatchSampler(1, 4), Row(SamplingParams(temperature=1.0, top_p=0.7, seed=1))
    got = [sampler.sample(logits, [row])[0].token_id for _ in range(1000)]
    assert set(got) == {0, 1} and abs(got.count(1) / 1000 - 0.375) < 0.05  # 3.3 standard deviations


def test_temperature_top_k_and_top_p_shape_the_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))  # [4]
    assert torch.allclose(sampling_probs(logits, SamplingParams(temperature=0.5)), torch.softmax(logits / 0.5, -1))
    top_k = sampling_probs(logits, SamplingParams(top_k=2))
    assert torch.allclose(top_k, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    top_p = sampling_probs(logits, SamplingParams(top_p=0.7))  # 0.5 < 0.7 keeps the 2nd; 0.8 >= 0.7 drops the 3rd
    assert torch.allclose(top_p, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.allclose(sampling_probs(logits, SamplingParams(top_p=0.01)), torch.tensor([1.0, 0, 0, 0]))
    # top-k first: 0.5, 0.3, 0.15 renormalized, so 0.842 of mass comes before the 3rd (0.8 before top-k)
    both = sampling_probs(logits, SamplingParams(top_k=3, top_p=0.83))
    assert torch.allclose(both, torch.tensor([0.625, 0.375, 0.0, 0.0]))


def test_top_k_one_is_greedy_even_when_sampling_and_other_rows_keep_their_own_k():
    assert draw(SamplingParams(temperature=1.5, top_k=1, seed=1)) == [int(logits_row(0).argmax())] * 20
    logits = torch.linspace(0.0, 1.0, V).repeat(2, 1)  # [2, V], nearly uniform, no ties: the best are V-1, V-2
    sampler = BatchSampler(2, V)
    rows = [Row(SamplingParams(temperature=1.0, top_k=2, seed=0), slot=0), Row(SamplingParams(seed=1), slot=1)]
    draws = [[s.token_id for s in sampler.sample(logits, rows)] for _ in range(100)]
    assert {d[0] for d in draws} == {V - 1, V - 2} and len({d[1] for d in draws}) > 10


def test_tiny_temperatures_are_greedy_instead_of_overflowing():
    assert draw(SamplingParams(temperature=1e-30, seed=1)) == [int(logits_row(0).argmax())] * 20


def test_presence_and_frequency_penalties_use_output_counts():
    params = SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25)

    def third_token(rival):
        sampler, row = BatchSampler(1, 4), Row(params)
        first = torch.tensor([[0.0, 3.0, 0.0, 0.0]])  # token 1 twice: penalized to 3 - 0.5 - 2 * 0.25 = 2.0
        assert [sampler.sample(first, [row])[0].token_id for _ in range(2)] == [1, 1]
        return sampler.sample(torch.tensor([[0.0, 3.0, rival, 0.0]]), [row])[0].token_id

    assert third_token(1.99) == 1 and third_token(2.01) == 2


def test_greedy_with_a_presence_penalty_avoids_repeating():
    logits = torch.tensor([[2.0, 1.5, 0.0]])  # [1, 3]
    sampler, row = BatchSampler(1, 3), Row(SamplingParams(temperature=0.0, presence_penalty=1.0))
    assert [sampler.sample(logits, [row])[0].token_id for _ in range(3)] == [0, 1, 0]
    wide = BatchSampler(8, 3)  # more rows than tokens in the vocabulary
    rows = [Row(SamplingParams(temperature=0.0, presence_penalty=1.0), slot=i) for i in range(5)]
    assert [[s.token_id for s in wide.sample(logits.repeat(5, 1), rows)] for _ in range(3)] == [[0] * 5, [1] * 5,
                                                                                                [0] * 5]


def test_a_new_request_in_a_row_starts_with_fresh_counts_bias_and_draws():
    sampler = BatchSampler(1, V)
    logits = logits_row(0)[None]
    best = int(logits.argmax())
    penalized = Row(SamplingParams(temperature=0.0, presence_penalty=2.0, logit_bias={best: -100}))
    assert sampler.sample(logits, [penalized])[0].token_id != best
    plain = Row(SamplingParams(temperature=0.0))  # the same row, a new owner: no bias, no counts
    assert sampler.sample(logits, [plain])[0].token_id == best
    seeded = SamplingParams(temperature=1.0, seed=11)
    first = [sampler.sample(logits, [Row(seeded)])[0].token_id for _ in range(3)]  # a new request each time
    assert len(set(first)) == 1 and first[0] == draw(seeded, steps=1)[0]


def test_logit_bias_steers_greedy_and_sampled_rows():
    logits = logits_row(4)[None]  # [1, V]
    best = int(logits.argmax())
    assert draw(SamplingParams(temperature=0.0, logit_bias={best: -100.0}), seed_logits=4)[0] != best
    assert set(draw(SamplingParams(temperature=1.0, seed=2, logit_bias={9: 100.0}), seed_logits=4)) == {9}


class AllowOnly:
    """A trivial TokenMask: only the given tokens, recording what it is told was sampled."""

    def __init__(self, allowed):
        self.allowed, self.accepted = list(allowed), []

    def fill_bitmask(self, bitmask, row):
        words = [0] * bitmask.shape[1]
        for t in self.allowed:
            words[t // 32] |= 1 << (t % 32)
        bitmask[row] = torch.tensor([w - 2**32 if w >= 2**31 else w for w in words], dtype=torch.int32)

    def accept_token(self, token_id):
        self.accepted.append(token_id)


def test_token_masks_limit_constrained_rows_only():
    logits = torch.stack([logits_row(1), logits_row(1), logits_row(1)])  # [3, V]
    sampler = BatchSampler(3, V)
    allowed = [3, 31, 32, 49]  # bit 31 is the int32 sign bit: must still read as allowed
    rows = [Row(SamplingParams(temperature=0.0), 0, AllowOnly(allowed)), Row(SamplingParams(temperature=0.0), 1),
            Row(SamplingParams(temperature=5.0, seed=3), 2, AllowOnly(allowed))]
    seen = [[s.token_id for s in sampler.sample(logits, rows)] for _ in range(30)]
    assert {s[0] for s in seen} == {max(allowed, key=lambda t: float(logits[0, t]))}
    assert {s[1] for s in seen} == {int(logits[1].argmax())} and int(logits[1].argmax()) not in allowed
    assert {s[2] for s in seen} <= set(allowed) and len({s[2] for s in seen}) > 1


def test_logprobs_are_raw_model_logprobs_with_sorted_alternatives():
    logits = logits_row(2)[None]  # [1, V]
    raw = torch.log_softmax(logits[0], -1)  # [V]
    params = SamplingParams(temperature=0.3, top_k=3, presence_penalty=1.0, seed=0, logprobs=True, top_logprobs=4,
                            logit_bias={0: 5.0})
    s = BatchSampler(1, V).sample(logits, [Row(params)])[0]
    assert s.logprob == pytest.approx(float(raw[s.token_id]))
    assert [t for t, _ in s.top] == raw.topk(4).indices.tolist()
    assert [lp for _, lp in s.top] == pytest.approx(raw.topk(4).values.tolist())
    assert math.exp(s.top[0][1]) >= math.exp(s.top[-1][1])


def test_logprob_rows_among_others_get_their_own_alternatives():
    logits = torch.stack([logits_row(0), logits_row(1), logits_row(2)])  # [3, V]
    rows = [Row(SamplingParams(temperature=0.0, logprobs=True, top_logprobs=1), slot=0),
            Row(SamplingParams(temperature=0.0), slot=1),
            Row(SamplingParams(temperature=0.0, logprobs=True, top_logprobs=3), slot=2)]
    got = BatchSampler(3, V).sample(logits, rows)
    for i in (0, 2):
        raw = torch.log_softmax(logits[i], -1)
        n = rows[i].params.top_logprobs
        assert got[i].logprob == pytest.approx(float(raw.max()))
        assert [t for t, _ in got[i].top] == raw.topk(n).indices.tolist()
    assert got[1].logprob is None and got[1].top == []


def test_no_logprobs_unless_asked_and_zero_alternatives():
    logits = logits_row(0)[None]  # [1, V]
    assert BatchSampler(1, V).sample(logits, [Row(SamplingParams(temperature=0))])[0].logprob is None
    s = BatchSampler(1, V).sample(logits, [Row(SamplingParams(temperature=0, logprobs=True))])[0]
    assert s.logprob is not None and s.top == []


def test_rows_must_match_requests():
    with pytest.raises(ValueError):
        BatchSampler(2, V).sample(torch.zeros(2, V), [Row(SamplingParams())])
