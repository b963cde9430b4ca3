"""The hook for constrained decoding: a per-request mask of the tokens allowed next, applied before sampling.

A request added with `HFEngine.add_request(..., constraint=mask)` is sampled, at every step, only among the tokens
its `TokenMask` allows; greedy requests too. The sampler (sampler.py) calls `fill_bitmask` once per step for each
constrained row of the batch, uploads the rows' bitmasks in one copy and sets every other token's logit to -inf
(`apply_token_bitmask`) before logit_bias, penalties, temperature, top-k and top-p. After the step the engine
calls `accept_token` with the token drawn (which may end the request: see TokenMask). The layout is llguidance's (`llguidance.numpy.fill_next_token_bitmask`
fills it; `LLMatcher.consume_token` accepts), so a grammar matcher plugs in with a two-method adapter.

A mask must allow at least one token (allow eos when the grammar is complete): a row with nothing allowed has no
distribution to sample from and gets an arbitrary token.
"""
from __future__ import annotations

from typing import Protocol

import torch

BITS = 32  # tokens per bitmask word


class TokenMask(Protocol):
    """Which tokens one constrained request may sample next, and the token it got."""

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Allow token t by setting bit t % 32 of bitmask[row, t // 32]. bitmask: int32 [rows, words(V)] on the
        CPU, zeroed: a token whose bit stays clear is not sampled."""

    def accept_token(self, token_id: int) -> bool | None:
        """Advance past the token just sampled for this request. True: that token ended an output the mask closed
        early to fit the request's budget (it then finishes as "length", as one the budget cut)."""


def words(vocab_size: int) -> int:
    """Bitmask words per row for a vocabulary of `vocab_size` tokens."""
    return (vocab_size + BITS - 1) // BITS


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 [C, words(V)] -> bool [C, V]: True where the token is allowed (on the bitmask's device)."""
    shifts = torch.arange(BITS, dtype=torch.int32, device=bitmask.device)  # [32]
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [C, W, 32]; an arithmetic shift keeps bit 31 right after & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask(logits: torch.Tensor, allowed: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """logits [R, V] with -inf where `allowed` ([C, V] bool) is False, for the C rows `rows` ([C] long; None: all
    R rows, C == R). Out of place: the model's logits stay as they were (raw logprobs are read from them)."""
    if rows is None:
        return logits.masked_fill(~allowed, float("-inf"))
    masked = logits.clone()
    masked[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
    return masked
