"""Batched sampling: every row of a step drawn at once, each request with its own seed, one host transfer.

Order (as vLLM): raw logprobs → allowed-token masks of constrained rows (constraints.py) → logit_bias →
presence/frequency penalties → argmax where temperature == 0, else top-k → temperature → top-p → a draw (top-k
before the temperature picks the same tokens). The draw needs weights only in proportion to the probabilities:
exp((logits - max) / T), never normalized; top-p orders only the best candidates where the host may read values
(`nucleus`), and rows without top-p or top-k are never sorted.
Logprobs are those of the *raw* model distribution (log_softmax of the logits as the model gave them), vLLM's
default: they describe the model, not the sampling knobs.

The draw is an exponential race (draw.py) keyed by splitmix64 of (seed, tokens the request drew before): a
counter-based generator, so a row's draw depends only on its own seed, position and distribution, never on its
neighbours in the batch, and a seeded request is reproducible without a torch.Generator and a draw per row.

Per-request values live in per-row device tables (a row is the request's KV slot), written when a request first
samples in its row: a step builds no tensor from them. The step's tokens, with the logprobs asked for, come back to
the host in one transfer (device_io.download); nothing else in here waits for the device.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from models.llm.constraints import TokenMask, apply_token_bitmask, unpack_bitmask, words
from models.llm.device_io import download, upload, upload_tensor
from models.llm.draw import Race, row_keys
from models.llm.types import SamplingParams

GREEDY_BELOW = 1e-5  # temperatures below this sample greedily (as vLLM): logits / 1e-30 overflow to inf
TOP_P_CANDIDATES = 256  # with host reads: entries ordered for top-p before sorting whole rows (nucleus)
_TEMPERATURE, _TOP_P, _PRESENCE, _FREQUENCY = range(4)  # columns of BatchSampler.knobs (float32)
_TOP_K, _SEED, _DRAWS = range(3)  # columns of BatchSampler.counters (int64)


@dataclass(slots=True)
class SampledToken:
    """One sampled token; logprob/top are filled only when the request asked for logprobs."""

    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)  # (token_id, logprob), best first


class SamplingRow(Protocol):
    """What the sampler reads from a request (EngineRequest has it)."""

    slot: int  # its row in the sampler's tables
    params: SamplingParams
    seed: int  # 0 <= seed < 2**64
    constraint: TokenMask | None


@dataclass
class StepPlan:
    """What the step's rows ask for, read from their params on the host (deciding which ops run needs no sync)."""

    greedy: int = 0  # rows with temperature 0
    max_top_k: int = 0  # largest top_k among rows that set one (0: none)
    top_p: bool = False  # some row has top_p < 1
    penalties: bool = False
    bias: bool = False
    logprob_rows: list[int] = field(default_factory=list)
    max_top_logprobs: int = 0
    constrained: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, requests: list[SamplingRow], plain: list[bool], vocab_size: int) -> "StepPlan":
        """The plan of `requests`; plain[slot] marks rows that only sample at a temperature (skipped fast)."""
        plan = cls()
        for i, r in enumerate(requests):
            if plain[r.slot]:
                continue
            p = r.params
            if p.temperature < GREEDY_BELOW:
                plan.greedy += 1
            if 0 < p.top_k < vocab_size:
                plan.max_top_k = max(plan.max_top_k, p.top_k)
            plan.top_p |= p.top_p < 1.0
            plan.penalties |= p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
            plan.bias |= bool(p.logit_bias)
            if p.logprobs:
                plan.logprob_rows.append(i)
                plan.max_top_logprobs = max(plan.max_top_logprobs, p.top_logprobs)
            if r.constraint is not None:
                plan.constrained.append(i)
        return plan


class BatchSampler:
    """Samples one token per row of a step's logits; owns the per-row tables (see the module docstring)."""

    def __init__(self, num_rows: int, vocab_size: int, device: torch.device | str = "cpu"):
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.knobs = torch.zeros(num_rows, 4, dtype=torch.float32, device=self.device)  # temperature .. frequency
        self.counters = torch.zeros(num_rows, 3, dtype=torch.long, device=self.device)  # top_k, seed, draws
        self.counts: torch.Tensor | None = None  # [rows, V] output-token counts, from the first penalized request
        self.bias: torch.Tensor | None = None  # [rows, V] logit_bias, from the first request that sets one
        self._row_ids = torch.arange(num_rows, device=self.device)  # [rows]
        self._race = Race(vocab_size, self.device)
        # torch's CPU argmax costs several times a two-level one; on a device it is one kernel
        self._argmax = self._race.argmax if self.device.type == "cpu" else functools.partial(torch.argmax, dim=-1)
        self.host_reads = self.device.type == "cpu"  # nucleus may read values: nothing to wait for on the CPU
        self._owner: list[SamplingRow | None] = [None] * num_rows
        self._plain = [False] * num_rows  # the row's request only samples at a temperature (see StepPlan.of)

    def sample(self, logits: torch.Tensor, requests: list[SamplingRow]) -> list[SampledToken]:
        """One token per row of `logits` ([R, V], row i belongs to requests[i]), with the logprobs asked for."""
        if logits.dim() != 2 or logits.shape[0] != len(requests):
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(requests)} requests")
        self._admit(requests)
        plan = StepPlan.of(requests, self._plain, self.vocab_size)
        rows = self._rows(requests)
        raw = logits.float()  # [R, V]; never written to (it may be a CUDA graph's output buffer)
        x = self._process(raw, requests, rows, plan)
        tokens = self._choose(x, rows, plan)  # [R] long
        self._record(rows, tokens, len(requests))
        return self._to_host(tokens, raw, requests, plan)

    def release_all(self) -> None:
        """Forget every row's owner (the engine is closing)."""
        self._owner = [None] * len(self._owner)

    def _admit(self, requests: list[SamplingRow]) -> None:
        """Write the table rows of requests sampling for the first time in their row (one upload per table)."""
        new = [r for r in requests if self._owner[r.slot] is not r]
        if not new:
            return
        slots = upload([r.slot for r in new], torch.long, self.device)
        knobs = [[_temperature(r.params), r.params.top_p, r.params.presence_penalty, r.params.frequency_penalty]
                 for r in new]
        top_k = [r.params.top_k if 0 < r.params.top_k < self.vocab_size else self.vocab_size for r in new]
        counters = [[k, _as_int64(r.seed), 0] for k, r in zip(top_k, new)]
        self.knobs[slots] = upload(knobs, torch.float32, self.device)
        self.counters[slots] = upload(counters, torch.long, self.device)
        if self.counts is None and any(_penalized(r.params) for r in new):
            self.counts = torch.zeros(len(self._owner), self.vocab_size, device=self.device)
        if self.counts is not None:
            self.counts[slots] = 0.0
        self._admit_bias(new, slots)
        for r in new:
            self._owner[r.slot] = r
            self._plain[r.slot] = _plain(r, self.vocab_size)

    def _admit_bias(self, new: list[SamplingRow], slots: torch.Tensor) -> None:
        if self.bias is None and any(r.params.logit_bias for r in new):
            self.bias = torch.zeros(len(self._owner), self.vocab_size, device=self.device)
        if self.bias is None:
            return
        self.bias[slots] = 0.0
        entries = [(r.slot, int(t), float(v)) for r in new for t, v in r.params.logit_bias.items()]
        if entries:
            index = upload([[s for s, _, _ in entries], [t for _, t, _ in entries]], torch.long, self.device)
            self.bias[index[0], index[1]] = upload([v for _, _, v in entries], torch.float32, self.device)

    def _rows(self, requests: list[SamplingRow]) -> slice | torch.Tensor:
        """The requests' table rows: a slice when they are rows 0..R-1 in order (a decode step of packed slots)."""
        slots = [r.slot for r in requests]
        if slots == list(range(len(slots))):
            return slice(0, len(slots))
        return upload(slots, torch.long, self.device)

    def _process(self, raw: torch.Tensor, requests: list[SamplingRow], rows, plan: StepPlan) -> torch.Tensor:
        """Constraint masks, logit_bias and penalties, out of place: [R, V] -> [R, V]."""
        x = raw
        if plan.constrained:
            bitmask = torch.zeros(len(plan.constrained), words(self.vocab_size), dtype=torch.int32)
            for j, i in enumerate(plan.constrained):
                requests[i].constraint.fill_bitmask(bitmask, j)
            allowed = unpack_bitmask(upload_tensor(bitmask, self.device), self.vocab_size)  # [C, V]
            which = None if len(plan.constrained) == len(requests) else upload(plan.constrained, torch.long,
                                                                               self.device)
            x = apply_token_bitmask(x, allowed, which)
        if plan.bias:
            x = x + self.bias[rows]
        if plan.penalties:
            counts = self.counts[rows]  # [R, V]
            knobs = self.knobs[rows]  # [R, 4]
            x = x - knobs[:, _PRESENCE, None] * (counts > 0) - knobs[:, _FREQUENCY, None] * counts
        return x

    def _choose(self, x: torch.Tensor, rows, plan: StepPlan) -> torch.Tensor:
        """Argmax for greedy rows, a draw for the others: [R, V] -> [R] long."""
        if plan.greedy == x.shape[0]:
            return self._argmax(x)
        knobs, counters = self.knobs[rows], self.counters[rows]  # [R, 4], [R, 3]
        temperature = knobs[:, _TEMPERATURE]
        greedy = temperature == 0.0 if plan.greedy else None  # [R] bool
        keys = row_keys(counters[:, _SEED], counters[:, _DRAWS])  # [R] int64: this step's noise, per row
        weights = filtered_weights(x, temperature if greedy is None else torch.where(greedy, 1.0, temperature),
                                   counters[:, _TOP_K] if plan.max_top_k else None, plan.max_top_k,
                                   knobs[:, _TOP_P] if plan.top_p else None, self.host_reads)
        drawn = self._race(weights, keys)
        return drawn if greedy is None else torch.where(greedy, self._argmax(x), drawn)

    def _record(self, rows, tokens: torch.Tensor, count: int) -> None:
        """Count the draw (the next uniform of each row) and, for penalties, the tokens."""
        self.counters[rows, _DRAWS] += 1
        if self.counts is not None:
            index = self._row_ids[:count] if isinstance(rows, slice) else rows
            self.counts.index_put_((index, tokens), torch.ones_like(tokens, dtype=self.counts.dtype),
                                   accumulate=True)

    def _to_host(self, tokens: torch.Tensor, raw: torch.Tensor, requests: list[SamplingRow],
                 plan: StepPlan) -> list[SampledToken]:
        """The step's one device-to-host transfer: tokens, and the raw logprobs of the rows that asked."""
        if not plan.logprob_rows:
            return [SampledToken(t) for t in download(tokens)]
        which = None if len(plan.logprob_rows) == len(requests) else upload(plan.logprob_rows, torch.long,
                                                                             self.device)
        logprobs = torch.log_softmax(raw if which is None else raw[which], dim=-1)  # [L, V]
        chosen = tokens if which is None else tokens[which]  # [L]
        parts = [tokens.double(), logprobs.gather(1, chosen[:, None])[:, 0].double()]
        n = plan.max_top_logprobs
        if n:
            values, ids = logprobs.topk(n, dim=-1)  # [L, n], best first
            parts += [ids.double().flatten(), values.double().flatten()]
        host = download(torch.cat(parts))  # float64 holds token ids and float32 logprobs exactly
        return _unpack(host, requests, plan)


def _unpack(host: list[float], requests: list[SamplingRow], plan: StepPlan) -> list[SampledToken]:
    """Split the downloaded [tokens R | chosen L | top ids L*n | top logprobs L*n] back into SampledTokens."""
    count, rows, n = len(requests), len(plan.logprob_rows), plan.max_top_logprobs
    out = [SampledToken(int(t)) for t in host[:count]]
    ids_at, values_at = count + rows, count + rows + rows * n
    for j, i in enumerate(plan.logprob_rows):
        out[i].logprob = host[count + j]
        k = min(requests[i].params.top_logprobs, n)
        start = j * n
        out[i].top = [(int(host[ids_at + start + m]), host[values_at + start + m]) for m in range(k)]
    return out


def filtered_weights(x: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor | None, max_top_k: int,
                     top_p: torch.Tensor | None, host_reads: bool = False) -> torch.Tensor:
    """Each row's weights [R, V] (vocabulary order, proportional to its probabilities, the best 1) at its
    temperature ([R], > 0) after its top-k (top_k [R] long, V = off; max_top_k the largest that is on), then its
    top-p (top_p [R], 1 = off): exp((x - max) / T), no normalization, since the race needs none. A row whose knobs
    are off gets exactly its tempered weights, whatever the other rows ask: its draw must not depend on its
    neighbours. host_reads: the CPU, where reading values waits for nothing (see nucleus, _heaviest)."""
    if top_k is not None:
        x = _top_k_filter(x, top_k, max_top_k, host_reads)
    weights = (x - x.amax(dim=-1, keepdim=True)).div_(temperature[:, None]).exp_()  # [R, V], new: ours to write
    return weights if top_p is None else nucleus(weights, top_p, host_reads)


def nucleus(weights: torch.Tensor, top_p: torch.Tensor, host_reads: bool = False) -> torch.Tensor:
    """`weights` [R, V] (>= 0) with 0 outside each row's nucleus (top_p [R], 1 = off): the best entries while the
    mass of those strictly before is below top_p of the row's; entries tied with the lightest kept one stay too.
    host_reads (the CPU, where reading a value waits for nothing): order only the heaviest candidates when every
    nucleus ends among them, else sort with numpy (_best_first); the result is the same."""
    limit = top_p[:, None] * weights.sum(dim=-1, keepdim=True)  # [R, 1]
    ordered = _best_first(weights, limit, top_p < 1.0, host_reads)  # [R, K], descending
    before = _mass_before(ordered)  # [R, K]: nondecreasing, 0 first (the best entry is always kept)
    kept = (before < limit).sum(dim=-1, keepdim=True)  # [R, 1] >= 1
    lightest = ordered.gather(1, kept - 1).masked_fill(top_p[:, None] >= 1.0, 0.0)  # [R, 1]
    return weights.masked_fill_(weights < lightest, 0.0)


def _best_first(weights: torch.Tensor, limit: torch.Tensor, active: torch.Tensor, host_reads: bool) -> torch.Tensor:
    """Each row's weights, best first: all V, or with host_reads only the heaviest TOP_P_CANDIDATES when their mass
    reaches every active row's limit (the entry after them is then dropped in a full sort too: `_mass_before`
    gives it exactly their cumulative sum, as a full sort's does)."""
    vocab = weights.shape[-1]
    if host_reads and TOP_P_CANDIDATES < vocab:
        ordered = _heaviest(weights, TOP_P_CANDIDATES, host_reads)  # [R, TOP_P_CANDIDATES]
        if bool(((ordered.cumsum(dim=-1)[:, -1:] >= limit) | ~active[:, None]).all()):
            return ordered
    return _heaviest(weights, vocab, host_reads)


def _heaviest(x: torch.Tensor, count: int, host_reads: bool) -> torch.Tensor:
    """The `count` largest entries of each row of x [R, V], best first: [R, count]. With host_reads (the CPU)
    numpy's partition and sort pick them: torch's CPU topk costs about twice as much, its sort 20 times."""
    vocab = x.shape[-1]
    if not host_reads:
        return x.sort(dim=-1, descending=True).values if count >= vocab else x.topk(count, dim=-1).values
    values = x.detach().numpy()  # [R, V], shares the memory
    if count < vocab:
        values = np.partition(values, vocab - count, axis=-1)[:, vocab - count :]  # the largest, unordered
    return torch.from_numpy(np.sort(values, axis=-1)[:, ::-1].copy())  # a copy: torch takes no negative strides


def _mass_before(ordered: torch.Tensor) -> torch.Tensor:
    """Exclusive cumulative sums along rows: entry i holds cumsum[i - 1] exactly (0 for the first)."""
    return torch.nn.functional.pad(ordered.cumsum(dim=-1)[:, :-1], (1, 0))


def _top_k_filter(scaled: torch.Tensor, top_k: torch.Tensor, max_top_k: int, host_reads: bool) -> torch.Tensor:
    """-inf below each row's k-th largest logit; rows with top_k off (> max_top_k) keep everything."""
    best = _heaviest(scaled, max_top_k, host_reads)  # [R, k], best first
    kth = best.gather(1, (top_k.clamp(max=max_top_k) - 1)[:, None])  # [R, 1]
    kth = kth.masked_fill(top_k[:, None] > max_top_k, float("-inf"))
    return scaled.masked_fill(scaled < kth, float("-inf"))


def sampling_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution ([V], vocabulary order) a row with these params (temperature > 0) is drawn from."""
    vocab = logits.shape[-1]
    top_k = params.top_k if 0 < params.top_k < vocab else 0
    weights = filtered_weights(logits.float()[None], torch.tensor([float(params.temperature)]),
                               torch.tensor([top_k]) if top_k else None, top_k,
                               torch.tensor([params.top_p]) if params.top_p < 1.0 else None)[0]
    return weights / weights.sum()


def _temperature(params: SamplingParams) -> float:
    return 0.0 if params.temperature < GREEDY_BELOW else float(params.temperature)


def _plain(r: SamplingRow, vocab_size: int) -> bool:
    """Samples at a temperature with no other knob: nothing for StepPlan to note."""
    p = r.params
    return (p.temperature >= GREEDY_BELOW and not 0 < p.top_k < vocab_size and p.top_p >= 1.0
            and not _penalized(p) and not p.logit_bias and not p.logprobs and r.constraint is None)


def _penalized(params: SamplingParams) -> bool:
    return params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


def _as_int64(seed: int) -> int:
    """A 64-bit unsigned seed as the int64 with the same bits."""
    return seed - 2**64 if seed >= 2**63 else seed
