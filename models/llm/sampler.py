"""Turn last-position logits into next tokens, one row per request, each with its own params and generator.

Order of processing (as in vLLM): presence/frequency penalties on the output tokens so far → greedy argmax when
temperature == 0, else temperature → top-k → top-p → a draw from that request's `torch.Generator`.

Logprobs are those of the *raw* model distribution (log_softmax of the logits before penalties, temperature,
top-k and top-p), which is vLLM's default: they describe the model, not the sampling knobs.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch

from models.llm.types import SamplingParams


@dataclass
class SampledToken:
    """One sampled token; logprob/top are filled only when the request asked for logprobs."""

    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)  # (token_id, logprob), best first


class RequestSampler:
    """Per-request sampling state: the params, a seeded generator, and output-token counts for the penalties."""

    def __init__(self, params: SamplingParams, vocab_size: int, device: torch.device | str = "cpu"):
        self.params = params
        self.vocab_size = vocab_size
        self.generator = torch.Generator(device=device)
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator.manual_seed(seed)
        self.counts: torch.Tensor | None = None  # [V] float; only when a penalty is set
        if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)

    @property
    def greedy(self) -> bool:
        return self.params.temperature == 0.0

    def record(self, token_id: int) -> None:
        """Count an output token (for presence/frequency penalties)."""
        if self.counts is not None and 0 <= token_id < self.vocab_size:
            self.counts[token_id] += 1.0


def sample_next(logits: torch.Tensor, samplers: list[RequestSampler]) -> list[SampledToken]:
    """Sample one token per row of `logits` ([B, V], row i belongs to samplers[i]) and record it.

    Greedy rows are one argmax over the batch; only rows that sample draw one by one, each from its own
    generator (so a seeded request draws the same tokens whatever its neighbours). One device sync per call.
    """
    if logits.dim() != 2 or logits.shape[0] != len(samplers):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(samplers)} samplers")
    logits = logits.float()  # [B, V]
    processed = apply_penalties(logits, samplers)  # [B, V]
    tokens = torch.argmax(processed, dim=-1)  # [B]
    rows = [i for i, s in enumerate(samplers) if not s.greedy]
    if rows:
        probs = batch_sampling_probs(processed[rows], [samplers[i].params for i in rows])  # [R, V]
        draws = [torch.multinomial(probs[j], 1, generator=samplers[i].generator) for j, i in enumerate(rows)]
        tokens[rows] = torch.cat(draws)
    token_ids = tokens.tolist()
    results = []
    for i, (sampler, token_id) in enumerate(zip(samplers, token_ids)):
        sampler.record(token_id)
        results.append(_with_logprobs(token_id, logits[i], sampler.params))
    return results


def apply_penalties(logits: torch.Tensor, samplers: list[RequestSampler]) -> torch.Tensor:
    """OpenAI penalties: logit -= presence * (count > 0) + frequency * count, over output tokens only."""
    if all(s.counts is None for s in samplers):
        return logits
    logits = logits.clone()  # [B, V]
    for i, s in enumerate(samplers):
        if s.counts is not None:
            p = s.params
            logits[i] -= p.presence_penalty * (s.counts > 0).float() + p.frequency_penalty * s.counts
    return logits


def sampling_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities ([V]) after temperature, top-k and top-p; tokens cut off get probability 0."""
    return batch_sampling_probs(logits[None], [params])[0]


def batch_sampling_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """[R, V] logits -> [R, V] probabilities after each row's temperature, top-k and top-p (temperature > 0)."""
    rows, vocab = logits.shape
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device)[:, None]  # [R, 1]
    logits = logits / temperature  # [R, V]
    top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    top_p = [p.top_p for p in params]
    if min(top_k) < vocab or min(top_p) < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [R, V], [R, V]
        if min(top_k) < vocab:
            k = torch.tensor(top_k, device=device)[:, None] - 1  # [R, 1]
            kth = sorted_logits.gather(1, k)  # [R, 1]: each row's k-th largest logit
            logits = logits.masked_fill(logits < kth, float("-inf"))
            sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
        if min(top_p) < 1.0:
            sorted_probs = torch.softmax(sorted_logits, dim=-1)  # [R, V]
            mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # [R, V]: mass of strictly better tokens
            drop_sorted = mass_before >= torch.tensor(top_p, device=device)[:, None]  # [R, V]; best token kept
            drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)  # [R, V] back in vocab order
            logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)  # [R, V]


def _with_logprobs(token_id: int, raw_logits: torch.Tensor, params: SamplingParams) -> SampledToken:
    """Attach the raw logprob of `token_id` and the top-n alternatives when the request asked for them."""
    if not params.logprobs:
        return SampledToken(token_id)
    raw_logprobs = torch.log_softmax(raw_logits, dim=-1)  # [V]
    top: list[tuple[int, float]] = []
    n = min(params.top_logprobs, raw_logprobs.shape[-1])
    if n > 0:
        values, ids = torch.topk(raw_logprobs, n)  # [n], [n]
        top = [(int(t), float(v)) for t, v in zip(ids.tolist(), values.tolist())]
    return SampledToken(token_id, float(raw_logprobs[token_id]), top)
