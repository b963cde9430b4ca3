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
    """Sample one token per row of `logits` ([B, V], row i belongs to samplers[i]) and record it."""
    if logits.dim() != 2 or logits.shape[0] != len(samplers):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(samplers)} samplers")
    logits = logits.float()  # [B, V]
    raw_logprobs = torch.log_softmax(logits, dim=-1)  # [B, V]
    processed = apply_penalties(logits, samplers)  # [B, V]
    results = []
    for i, sampler in enumerate(samplers):
        row = processed[i]  # [V]
        if sampler.greedy:
            token_id = int(torch.argmax(row))
        else:
            probs = sampling_probs(row, sampler.params)  # [V]
            token_id = int(torch.multinomial(probs, 1, generator=sampler.generator))
        sampler.record(token_id)
        results.append(_with_logprobs(token_id, raw_logprobs[i], sampler.params))
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
    logits = logits / params.temperature  # [V]
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(logits, params.top_k).values[-1]  # scalar: the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)  # [V], [V]
        sorted_probs = torch.softmax(sorted_logits, dim=-1)  # [V]
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # [V]: mass of strictly better tokens
        drop_sorted = mass_before >= params.top_p  # [V]; the best token is always kept
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)  # [V] back in vocab order
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)  # [V]


def _with_logprobs(token_id: int, raw_logprobs: torch.Tensor, params: SamplingParams) -> SampledToken:
    """Attach the raw logprob of `token_id` and the top-n alternatives when the request asked for them."""
    if not params.logprobs:
        return SampledToken(token_id)
    top: list[tuple[int, float]] = []
    n = min(params.top_logprobs, raw_logprobs.shape[-1])
    if n > 0:
        values, ids = torch.topk(raw_logprobs, n)  # [n], [n]
        top = [(int(t), float(v)) for t, v in zip(ids.tolist(), values.tolist())]
    return SampledToken(token_id, float(raw_logprobs[token_id]), top)
