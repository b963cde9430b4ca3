"""Prefix caching: full KV blocks of computed sequences kept in a bounded block pool, reused by later requests.

Layout (CPU-first, see docs/engine.md "The KV cache"): a running sequence computes in its slot lane of the
`SlotKVCache` (contiguous, so decode attention needs no gather), and the pool holds, per layer, K and V of
`num_blocks` blocks `[num_blocks, num_kv_heads, block_size, head_dim]`. When a request is admitted, the longest
cached run of its prompt's blocks (block_manager.py's chained keys) is copied into its lane and those tokens count
as computed; when its prompt is computed, and when it finishes, its full blocks the pool lacks are copied in. A
copy is a memcpy of the prefix's KV, far cheaper than the forward that made it. At least one prompt token is always
left to compute: its logits give the first output token.

Exactness: a cached block must hold the KV a fresh request would compute. Where steps of at most `inexact_rows`
tokens run on other weights than a prefill (cpu_int4.py's int4 decode path), only blocks inside a request's exact
prefix (its leading tokens all computed in larger steps, or copied from the pool) are published, and a hit leaves
more than `inexact_rows` tokens to compute, so that a lone step computing them takes the prefill's path too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from models.llm.block_manager import ROOT_KEY, BlockPool, block_keys
from models.llm.kv_cache import SlotKVCache


class CachedRequest(Protocol):
    """What the prefix cache reads and writes of a request (EngineRequest has it)."""

    slot: int | None
    num_computed: int
    num_exact: int  # leading tokens computed on a fresh prefill's path (or copied from the pool); <= num_computed
    prefix_keys: list[bytes]  # chained keys of its full blocks known to the pool (or matched from it)

    @property
    def token_ids(self) -> list[int]: ...


@dataclass
class PrefixCounters:
    """Prompt tokens found in the cache (not computed) and not found (computed), since start."""

    hit_tokens: int = 0
    miss_tokens: int = 0


class PrefixCache:
    """A bounded pool of KV blocks keyed by their tokens, copied into and out of the slot lanes of `cache`."""

    def __init__(self, cache: SlotKVCache, num_blocks: int, block_size: int, inexact_rows: int = 0):
        """inexact_rows: steps of at most this many tokens compute KV otherwise than a fresh prefill does (the int4
        decode path: cpu_int4.SMALL_ROWS); 0 when every step computes it alike."""
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        if inexact_rows < 0:
            raise ValueError("inexact_rows must be >= 0")
        self.cache = cache
        self.block_size = block_size
        self.inexact_rows = inexact_rows
        self.pool = BlockPool(num_blocks)
        shape, tensor = cache.shape, cache.keys[0]
        dims = (num_blocks, shape.num_kv_heads, block_size, shape.head_dim)
        # Empty: on CPU pages are committed only when a block is first written, so memory follows use.
        self.keys = [torch.empty(dims, dtype=tensor.dtype, device=tensor.device) for _ in range(shape.num_layers)]
        self.values = [torch.empty(dims, dtype=tensor.dtype, device=tensor.device) for _ in range(shape.num_layers)]
        self.counters = PrefixCounters()

    @property
    def reserved_bytes(self) -> int:
        return self.pool.num_blocks * self.block_size * self.cache.shape.bytes_per_token(self.keys[0].dtype)

    def attach(self, request: CachedRequest) -> int:
        """At admission (slot assigned, nothing computed): copy the longest cached prefix of the prompt into the
        request's lane, mark those tokens computed, and return how many they are."""
        prompt = request.token_ids
        # More than inexact_rows tokens are left to compute (at least the last one, whose logits we need), so that
        # a lone step computing them runs on a fresh prefill's path: at most one block less when blocks are larger.
        usable = max(0, len(prompt) - 1 - self.inexact_rows) // self.block_size
        keys = block_keys(prompt, self.block_size, usable)
        ids = self.pool.match(keys)
        hit = len(ids) * self.block_size
        if ids:
            self.cache.ensure_initialized(hit)  # before the copy: zeroing later must not wipe it
            index = torch.tensor(ids, device=self.keys[0].device)
            for layer in range(len(self.keys)):
                for pool, lanes in ((self.keys, self.cache.keys), (self.values, self.cache.values)):
                    blocks = pool[layer][index]  # [n, Hkv, bs, D]
                    lanes[layer][request.slot, :, :hit] = blocks.transpose(0, 1).flatten(1, 2)  # [Hkv, n*bs, D]
            self.pool.release(ids[::-1])  # the tail first: evicted before the blocks it depends on
        request.prefix_keys = keys[: len(ids)]
        request.num_computed = request.num_exact = hit
        self.counters.hit_tokens += hit
        self.counters.miss_tokens += len(prompt) - hit
        return hit

    def advance(self, request: CachedRequest, count: int, step_tokens: int) -> None:
        """Before `request.num_computed` moves past `count` tokens fed in a step of `step_tokens`: its exact prefix
        grows with them when the step took a fresh prefill's path and everything before them is exact."""
        if step_tokens > self.inexact_rows and request.num_exact == request.num_computed:
            request.num_exact += count

    def publish(self, request: CachedRequest) -> int:
        """Copy the full blocks of the request's exact prefix that the pool lacks into it; return how many were
        stored. Call while the request still holds its slot (its lane has the KV)."""
        full = request.num_exact // self.block_size
        known = len(request.prefix_keys)
        if full <= known:
            return 0
        parent = request.prefix_keys[-1] if known else ROOT_KEY
        tail = request.token_ids[known * self.block_size : full * self.block_size]
        new_keys = block_keys(tail, self.block_size, parent=parent)
        request.prefix_keys = request.prefix_keys + new_keys
        stored = [(known + i, self.pool.allocate(key)) for i, key in enumerate(new_keys)]
        stored = [(b, block_id) for b, block_id in stored if block_id is not None]
        if not stored:
            return 0
        device = self.keys[0].device
        blocks = torch.tensor([b for b, _ in stored], device=device)
        ids = torch.tensor([block_id for _, block_id in stored], device=device)
        for layer in range(len(self.keys)):
            for pool, lanes in ((self.keys, self.cache.keys), (self.values, self.cache.values)):
                lane = lanes[layer][request.slot, :, : full * self.block_size]  # [Hkv, full*bs, D]
                by_block = lane.unflatten(1, (full, self.block_size)).transpose(0, 1)  # [full, Hkv, bs, D]
                pool[layer][ids] = by_block[blocks]
        self.pool.release([block_id for _, block_id in reversed(stored)])
        return len(stored)
