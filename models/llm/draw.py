"""Seeded draws for the batched sampler: splitmix64 as a counter-based generator, and a two-level exponential race.

Each row's randomness at a step is keyed by (its seed, how many tokens it drew before): key = splitmix64 of the
pair, and the noise of entry (lane) j of the row is splitmix64 of (key, j). Nothing depends on other rows or on
what ran before, so a seeded request draws the same tokens whatever its neighbours in the batch, with no
torch.Generator and no draw per row.

The draw is an exponential race, the method torch.multinomial uses: entry i with weight w_i gets E_i ~ Exp(1), and
the largest w_i / E_i wins, with probability w_i / sum(w). A race is stable under small changes of the weights, as
bf16 arithmetic makes them when the batch around a request changes: the winner changes only when the two best
scores are that close. (An inverse CDF is not: its position moves with every weight before it, and on a flat
distribution almost any change lands on another entry.) The race runs in two levels, among blocks of RACE_BLOCK
entries (a block weighing its sum) and then within the winning block: exact, since the first arrival in a block
comes at the rate of its sum, and it needs noise for V / RACE_BLOCK + RACE_BLOCK entries per row instead of V.
The same blocks give greedy rows their argmax (`Race.argmax`): block maxima, then one block.
"""
from __future__ import annotations

import torch

RACE_BLOCK = 256  # entries per block: noise for V / 256 + 256 entries per row
_GOLDEN, _MIX1, _MIX2 = (c - 2**64 for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function on int64 read as unsigned (the arithmetic wraps, as splitmix64's does)."""
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def counter_uniform(seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """Uniform float64 in (0, 1): the (counter + 1)-th output of splitmix64 seeded with `seed` (int64 tensors)."""
    return (_shift_right(mix64(seed + (counter + 1) * _GOLDEN), 11).double() + 0.5) * 2.0**-53


def row_keys(seeds: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """The key of each row's noise at this step ([R] int64): splitmix64 of (seed, draws so far)."""
    return mix64(seeds + (draws + 1) * _GOLDEN)


def exponential_noise(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise [R, L] (float32): lane j of row r from splitmix64 of keys[r] + steps[j], steps = lane_steps(L)."""
    z = mix64(keys[:, None] + steps)  # [R, L]
    uniform = (_shift_right(z, 40).float() + 0.5) * 2.0**-24  # (0, 1), 24 bits
    return -torch.log(uniform)


def lane_steps(lanes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[L] int64: splitmix64's state increments of lanes 0..L-1."""
    return (torch.arange(lanes, device=device) + 1) * _GOLDEN


class Race:
    """The two-level exponential race of the module docstring for one vocabulary size (its constants made once)."""

    def __init__(self, vocab_size: int, device: torch.device | str = "cpu"):
        self.vocab_size = vocab_size
        self.block = min(RACE_BLOCK, vocab_size)
        self.full = vocab_size // self.block  # whole blocks; a shorter tail block follows when V is not a multiple
        self.blocks = self.full + (1 if vocab_size % self.block else 0)
        self.steps = lane_steps(self.blocks + self.block, device)  # lanes of the blocks, then of a block's entries
        self.within = torch.arange(self.block, device=device)  # [block]

    def __call__(self, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """One index per row of non-negative `weights` [R, V], each with probability weight / row sum ([R] long),
        keyed by `keys` ([R] int64). An entry of weight 0 never wins while its row has any weight."""
        noise = exponential_noise(keys, self.steps)  # [R, B + block]
        chosen = (self._blocks(weights, torch.sum) / noise[:, : self.blocks]).argmax(dim=-1)  # [R]
        inner = self._block_of(weights, chosen, 0.0)  # [R, block]
        picked = (inner / noise[:, self.blocks :]).argmax(dim=-1)  # [R]
        return (chosen * self.block + picked).clamp_(max=self.vocab_size - 1)

    def argmax(self, x: torch.Tensor) -> torch.Tensor:
        """x.argmax(-1) of [R, V] (the first of equal maxima, NaN counting as the largest), in two levels: the
        block maxima, then one block. On the CPU torch's argmax over a 49,152-entry row costs several times an amax."""
        chosen = self._blocks(x, torch.amax).argmax(dim=-1)  # [R]: the first block holding the row's maximum
        inner = self._block_of(x, chosen, float("-inf"))  # [R, block]
        return (chosen * self.block + inner.argmax(dim=-1)).clamp_(max=self.vocab_size - 1)

    def _blocks(self, x: torch.Tensor, reduce) -> torch.Tensor:
        return block_reduce(x, self.block, reduce)

    def _block_of(self, x: torch.Tensor, chosen: torch.Tensor, fill: float) -> torch.Tensor:
        """The entries of each row's chosen block: [R, block], `fill` past the vocabulary."""
        offsets = chosen[:, None] * self.block + self.within  # [R, block]
        return x.gather(1, offsets.clamp(max=self.vocab_size - 1)).masked_fill(offsets >= self.vocab_size, fill)


def race(weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Race(V)(weights, keys) for a one-off draw (the sampler keeps its Race)."""
    return Race(weights.shape[-1], weights.device)(weights, keys)


def block_reduce(x: torch.Tensor, block: int, reduce) -> torch.Tensor:
    """reduce(entries, dim) of each run of `block` entries of each row, the last one shorter when `block` does not
    divide V: [R, V] -> [R, ceil(V / block)]."""
    full = x.shape[-1] // block
    parts = [reduce(x[:, : full * block].unfold(1, block, block), -1)] if full else []  # [R, full]
    if x.shape[-1] > full * block:
        parts.append(reduce(x[:, full * block :], -1, keepdim=True))  # [R, 1]: the tail
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 read as unsigned (torch's >> is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)
