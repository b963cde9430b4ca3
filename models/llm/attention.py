"""Attention over the slot KV cache, plugged into transformers through its AttentionInterface.

A transformers causal LM computes q/k/v (rotary applied) in each attention module and then calls the function
registered under `config._attn_implementation`. We register `ATTENTION_NAME`: with a `StepBatch` in the forward
kwargs (`openserve_batch=`) it writes the step's new k/v into the slot cache and attends over each sequence's own
slot; without one it is plain SDPA, so the same model still works with `generate()` and ordinary calls.

One forward carries every sequence of a step packed into a single row: input_ids [1, N]. Tokens [0, num_decode)
are decode tokens, one per decoding sequence, in ascending slot order; prefill chunks follow, each contiguous.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

import torch
import torch.nn.functional as F

from models.llm.kv_cache import SlotKVCache

ATTENTION_NAME = "openserve_slots"
BATCH_KWARG = "openserve_batch"


@dataclass
class PrefillChunk:
    """`num_tokens` prompt tokens of the sequence in `slot`, at packed offset `offset`, positions start.."""

    offset: int
    num_tokens: int
    slot: int
    start: int  # tokens of this sequence already in the cache


@dataclass
class StepBatch:
    """Where this step's tokens go in the cache, and what each attends to. Built by the model runner."""

    cache: SlotKVCache
    write_slots: torch.Tensor  # [N] long: slot of each packed token
    write_positions: torch.Tensor  # [N] long: position of each packed token in its slot
    num_decode: int  # decode tokens first in the packed row
    decode_rows: torch.Tensor | None  # [num_decode] long: row of each decode token in the slot view; None = identity
    view_slots: int  # decode attention reads keys[:view_slots, :, :view_len]
    view_len: int
    context_lens: torch.Tensor | None  # [view_slots] long: tokens visible to each view row (0 = row unused)
    prefills: list[PrefillChunk] = field(default_factory=list)
    # Runs of view rows [start, end) attended over keys [0, length) each (split_by_length), when there are several;
    # None: one SDPA call, all rows over view_len.
    decode_segments: list[tuple[int, int, int]] | None = None
    attention_calls: int = 0  # layers that attended with this batch (0 after a forward: the model dropped it)
    _masks: dict = field(default_factory=dict)  # sliding window -> decode mask [view_slots, 1, 1, view_len]

    def decode_mask(self, window: int | None) -> torch.Tensor:
        """Boolean [view_slots, 1, 1, view_len]: key j is visible to row r iff j < len[r] (and in the window)."""
        if window not in self._masks:
            keys = torch.arange(self.view_len, device=self.context_lens.device)  # [L]
            lens = self.context_lens.clamp(min=1)[:, None]  # [S, 1]: an unused row sees key 0, avoiding NaN
            visible = keys[None] < lens  # [S, L]
            if window is not None:
                visible &= keys[None] >= lens - window
            self._masks[window] = visible[:, None, None, :]
        return self._masks[window]


def slot_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [1, Hq, N, D], key/value [1, Hkv, N, D] -> ([1, N, Hq, D], None), as transformers expects."""
    batch: StepBatch | None = kwargs.pop(BATCH_KWARG, None)
    if batch is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError("attention logit soft-capping and sinks are not supported by slot attention")
    batch.attention_calls += 1
    layer = module.layer_idx
    window = kwargs.get("sliding_window")
    k_new = key[0].transpose(0, 1)  # [N, Hkv, D]
    v_new = value[0].transpose(0, 1)  # [N, Hkv, D]
    batch.cache.write(layer, batch.write_slots, batch.write_positions, k_new, v_new)
    out = query.new_empty(query.shape[2], query.shape[1], query.shape[3])  # [N, Hq, D]
    if batch.num_decode:
        out[: batch.num_decode] = _decode(batch, layer, query[0, :, : batch.num_decode], scaling, window)
    for chunk in batch.prefills:
        q = query[0, :, chunk.offset : chunk.offset + chunk.num_tokens]  # [Hq, T, D]
        out[chunk.offset : chunk.offset + chunk.num_tokens] = _prefill(batch.cache, layer, chunk, q, scaling, window)
    return out[None], None


def _decode(batch: StepBatch, layer: int, q: torch.Tensor, scaling: float | None, window: int | None) -> torch.Tensor:
    """q [Hq, B, D] (one token per decoding sequence) -> [B, Hq, D], attending over the slot view."""
    num_heads, rows, head_dim = q.shape
    kv_heads = batch.cache.shape.num_kv_heads
    q = q.transpose(0, 1)  # [B, Hq, D]
    if batch.decode_rows is not None:  # scatter into the view's rows; unused rows stay zero and are ignored
        full = q.new_zeros(batch.view_slots, num_heads, head_dim)  # [S, Hq, D]
        full[batch.decode_rows] = q
        q = full
    # GQA without copying K/V: query head h uses kv head h // group, so group the query heads under their kv head.
    q = q.reshape(batch.view_slots, kv_heads, num_heads // kv_heads, head_dim)  # [S, Hkv, G, D]
    mask = batch.decode_mask(window)  # [S, 1, 1, L]
    if batch.decode_segments is None:
        keys = batch.cache.keys[layer][: batch.view_slots, :, : batch.view_len]  # [S, Hkv, L, D] (a view)
        values = batch.cache.values[layer][: batch.view_slots, :, : batch.view_len]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scaling)
    else:
        out = torch.cat([_decode_run(batch, layer, q, mask, run, scaling) for run in batch.decode_segments])
    out = out.reshape(batch.view_slots, num_heads, head_dim)  # [S, Hq, D]
    return out if batch.decode_rows is None else out[batch.decode_rows]  # [B, Hq, D]


def _decode_run(batch: StepBatch, layer: int, q: torch.Tensor, mask: torch.Tensor, run: tuple[int, int, int],
                scaling: float | None) -> torch.Tensor:
    """Decode attention of view rows [start, end) over keys [0, length): q [S, Hkv, G, D] -> [rows, Hkv, G, D]."""
    start, end, length = run
    keys = batch.cache.keys[layer][start:end, :, :length]  # [s, Hkv, l, D] (a view: no gather)
    values = batch.cache.values[layer][start:end, :, :length]
    return F.scaled_dot_product_attention(q[start:end], keys, values, attn_mask=mask[start:end, ..., :length],
                                          scale=scaling)


def _prefill(cache: SlotKVCache, layer: int, chunk: PrefillChunk, q: torch.Tensor, scaling: float | None,
             window: int | None) -> torch.Tensor:
    """q [Hq, T, D] of one chunk -> [T, Hq, D]: causal over the sequence's cached tokens plus the chunk."""
    end = chunk.start + chunk.num_tokens
    keys = cache.keys[layer][chunk.slot, :, :end]  # [Hkv, start + T, D]
    values = cache.values[layer][chunk.slot, :, :end]
    mask = None
    if chunk.start > 0 or window is not None:
        query_pos = torch.arange(chunk.start, end, device=q.device)[:, None]  # [T, 1]
        key_pos = torch.arange(end, device=q.device)[None]  # [1, start + T]
        mask = key_pos <= query_pos  # [T, start + T]
        if window is not None:
            mask &= key_pos > query_pos - window
    out = F.scaled_dot_product_attention(q[None], keys[None], values[None], attn_mask=mask, is_causal=mask is None,
                                         scale=scaling, enable_gqa=q.shape[0] != keys.shape[0])  # [1, Hq, T, D]
    return out[0].transpose(0, 1)


# (row, key) pairs each extra run must save: one more SDPA call per layer costs about what reading this many keys
# and values of a small model does.
MIN_SPLIT_SAVING = 2048
MAX_CUT_POINTS = 64  # cut points tried per run (every n/64-th row beyond 64 rows)


def split_by_length(lens: list[int], max_segments: int = 3) -> list[tuple[int, int, int]]:
    """Runs [start, end, length) of view rows for decode attention, each reading keys up to its own longest context:
    one long conversation then costs its own rows, not every row. Contiguous runs keep each a view of the slot cache.
    Greedy: cut the run whose best cut saves most, up to max_segments runs; keep the number of runs whose saving
    beats MIN_SPLIT_SAVING per extra run by the most (one run when none does)."""
    segments = [(0, len(lens), max(lens, default=0))]
    if len(lens) * segments[0][2] - sum(lens) < MIN_SPLIT_SAVING:  # even a run per row would not pay
        return segments
    cuts = [_best_split(lens, segments[0])]  # (saving, at) of each segment's best cut
    best, best_gain, saved = segments, 0, 0
    while len(segments) < max_segments:
        index = max(range(len(segments)), key=lambda i: cuts[i][0])
        saving, at = cuts[index]
        if saving <= 0:
            break
        start, end, _ = segments[index]
        halves = [(start, at, max(lens[start:at])), (at, end, max(lens[at:end]))]
        segments = [*segments[:index], *halves, *segments[index + 1 :]]
        cuts = [*cuts[:index], *(_best_split(lens, h) for h in halves), *cuts[index + 1 :]]
        saved += saving
        if saved - MIN_SPLIT_SAVING * (len(segments) - 1) > best_gain:
            best, best_gain = segments, saved - MIN_SPLIT_SAVING * (len(segments) - 1)
    return best


def _best_split(lens: list[int], segment: tuple[int, int, int]) -> tuple[int, int]:
    """(pairs saved, split point) of the best cut of `segment` in two, (0, start) when none helps."""
    start, end, length = segment
    rows = lens[start:end]
    if (end - start) * length - sum(rows) <= 0:  # every row as long as the longest: no cut saves anything
        return 0, start
    prefix = list(accumulate(rows, max))  # prefix[i]: longest of rows[:i + 1]
    suffix = list(accumulate(reversed(rows), max))[::-1]  # suffix[i]: longest of rows[i:]
    n = end - start
    stride = -(-n // MAX_CUT_POINTS)  # bounds the host's work at many rows
    savings = [(n * length - i * prefix[i - 1] - (n - i) * suffix[i], start + i) for i in range(stride, n, stride)]
    return max(savings, default=(0, start))


def register() -> None:
    """Make ATTENTION_NAME known to transformers (idempotent). Its mask creation is SDPA's for calls without a batch."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, slot_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
