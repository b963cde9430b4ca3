"""Decode-only steps on CUDA as CUDA graph replays (as gpt-fast and vLLM do): one launch instead of thousands.

Every graph is captured when the model loads (`capture_all`), never while serving: one per (slot bucket S, length
bucket L), largest first, into one shared memory pool (the largest capture sizes the pool; smaller ones reuse it),
until the graph memory budget is spent. A graph's forward always has S packed tokens, row i being slot i: rows of
slots that are not decoding carry a dummy token written at position slot_len - 1 (a position no live sequence has
reached, since a sequence that long is finished, and one written by a real token before any read) and attend only
to key 0. The decode attention reads keys[:S, :, :L] with the mask built inside the graph from the static
`context_lens` buffer. Inputs go into one static buffer by one copy from pinned memory that does not wait for the
device; every graph writes its logits into the first S rows of one shared [num_slots, V] buffer (one graph's own
[S, V] output each would cost 6.5 GB at 256 slots for a 1B Llama), and `run` returns a copy of the live rows.

The slot layout makes the view cover slots 0..highest live slot, so a step picks the smallest slot bucket that
covers its highest live slot (the allocator hands out the lowest free slot, keeping live slots packed low).

A capture failure (a host sync inside the forward, out of memory) turns graphs off with a logged reason kept in
`failure`, or raises FastPathError when `strict`. `api` is torch.cuda's graph/stream interface (CUDAGraph, graph,
Stream, stream, current_stream); tests pass a fake that records and replays the ops on the CPU.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from models.errors import FastPathError
from models.llm.attention import StepBatch
from models.llm.device_io import copy_into, upload
from models.llm.kv_cache import SlotKVCache
from models.llm.request import EngineRequest

log = logging.getLogger(__name__)

MIN_LEN_BUCKET = 256
# Graph memory (the shared pool) allowed at load when the caller gives no budget; captures beyond it are skipped
# and their steps run eagerly.
DEFAULT_GRAPH_BUDGET_BYTES = 4 * 2**30


def slot_buckets(num_slots: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to 64, then of 32, up to num_slots (always included)."""
    small = [b for b in (1, 2, 4) if b < num_slots]
    return small + list(range(8, min(num_slots, 64), 8)) + list(range(64, num_slots, 32)) + [num_slots]


def len_buckets(slot_len: int) -> list[int]:
    """Powers of two from MIN_LEN_BUCKET, capped by (and ending at) slot_len."""
    buckets, b = [], MIN_LEN_BUCKET
    while b < slot_len:
        buckets.append(b)
        b *= 2
    return buckets + [slot_len]


def bucket_for(buckets: list[int], need: int) -> int:
    """The smallest bucket >= need (buckets ascending, the last one covering every need)."""
    return next(b for b in buckets if b >= need)


class CudaGraphDecoder:
    """Replays decode-only steps; `capture_all()` once at load, then `run(decodes)` per step."""

    def __init__(self, forward, cache: SlotKVCache, vocab_size: int, dtype: torch.dtype, strict: bool = False,
                 api: Any = None, budget_bytes: int | None = None):
        self.forward = forward  # SlotModelForward
        self.cache = cache
        self.api = api if api is not None else torch.cuda
        self.strict = strict
        self.budget_bytes = DEFAULT_GRAPH_BUDGET_BYTES if budget_bytes is None else budget_bytes
        self.device = cache.keys[0].device
        n = cache.num_slots
        self.slot_buckets = slot_buckets(n)
        self.len_buckets = len_buckets(cache.slot_len)
        long = dict(dtype=torch.long, device=self.device)
        # The replay's inputs, column i for slot i, in one buffer so that a step fills them with one copy.
        self.inputs = torch.zeros(3, n, **long)  # [3, n]: input ids, positions, context lengths
        self.inputs[1].fill_(cache.slot_len - 1)
        self.write_slots = torch.arange(n, **long)  # [n]
        self.logits = torch.zeros(n, vocab_size, dtype=dtype, device=self.device)  # [n, V], shared by every graph
        self.graphs: dict[tuple[int, int], Any] = {}
        self.pool = None
        self.enabled = True
        self.failure: str | None = None  # why graphs are off, after a failed capture

    @property
    def num_captured(self) -> int:
        return len(self.graphs)

    def keys(self) -> list[tuple[int, int]]:
        """Every (slots, length) bucket pair, largest first: the first capture sizes the shared pool."""
        return sorted(((s, n) for s in self.slot_buckets for n in self.len_buckets), reverse=True)

    def capture_all(self, used_bytes=None) -> int:
        """Capture every bucket pair, largest first, while `used_bytes()` (graph memory so far; default: the
        device's reserved memory growth) stays within the budget; returns the number captured."""
        used_bytes = used_bytes or self._reserved_growth()
        for key in self.keys():
            if used_bytes() > self.budget_bytes:
                log.warning("CUDA graphs: budget of %.2f GiB spent after %d captures; smaller steps run eagerly",
                            self.budget_bytes / 2**30, len(self.graphs))
                break
            if not self._capture(*key):
                break
        if self.enabled:
            log.info("CUDA graphs: %d decode graphs captured at load (%d slot x %d length buckets)",
                     len(self.graphs), len(self.slot_buckets), len(self.len_buckets))
        return len(self.graphs)

    def run(self, decodes: list[EngineRequest]) -> torch.Tensor | None:
        """Logits [B, V] of `decodes` (sorted by slot) from a graph replay, a copy that the next replay leaves
        alone; None when graphs are off or no captured graph covers the step."""
        if not self.enabled or not decodes:
            return None
        view_len = max(r.num_computed + 1 for r in decodes)
        key = (bucket_for(self.slot_buckets, decodes[-1].slot + 1), bucket_for(self.len_buckets, view_len))
        graph = self.graphs.get(key)
        if graph is None:  # beyond the memory budget at load: eager
            return None
        self._fill(decodes, key[0])
        graph.replay()
        slots = [r.slot for r in decodes]
        if slots == list(range(len(slots))):
            return self.logits[: len(slots)].clone()  # [B, V]
        return self.logits[upload(slots, torch.long, self.device)]  # [B, V], a gather: a copy too

    def _fill(self, decodes: list[EngineRequest], rows: int) -> None:
        ids, positions, lens = [0] * rows, [self.cache.slot_len - 1] * rows, [0] * rows
        for r in decodes:
            ids[r.slot] = r.token_ids[r.num_computed]
            positions[r.slot] = r.num_computed
            lens[r.slot] = r.num_computed + 1
        copy_into(self.inputs[:, :rows], torch.tensor([ids, positions, lens], dtype=torch.long))  # [3, rows]

    def _batch(self, rows: int, length: int) -> StepBatch:
        return StepBatch(cache=self.cache, write_slots=self.write_slots[:rows], write_positions=self.inputs[1, :rows],
                         num_decode=rows, decode_rows=None, view_slots=rows, view_len=length,
                         context_lens=self.inputs[2, :rows])

    def _body(self, rows: int, length: int) -> None:
        """The captured work: the forward over `rows` static inputs, its logits into the shared buffer."""
        ids, positions = self.inputs[0:1, :rows], self.inputs[1:2, :rows]  # [1, rows] each
        self.logits[:rows].copy_(self.forward(ids, positions, self._batch(rows, length), keep=None))

    def _capture(self, rows: int, length: int) -> bool:
        """Capture one graph; on failure turn graphs off (or raise FastPathError when strict) and return False."""
        api = self.api
        try:
            stream = api.Stream(self.device)
            stream.wait_stream(api.current_stream(self.device))
            with api.stream(stream):  # warm up outside the graph (lazy inits, library workspaces)
                for _ in range(2):
                    self._body(rows, length)
            api.current_stream(self.device).wait_stream(stream)
            graph = api.CUDAGraph()
            with api.graph(graph, pool=self.pool):  # a fresh StepBatch: its masks are built inside the graph
                self._body(rows, length)
            self.pool = graph.pool()
        except Exception as error:  # noqa: BLE001 - graphs are an optimisation: stay correct, eager
            self.enabled = False
            self.failure = f"capture of {rows} slots x {length} tokens failed: {type(error).__name__}: {error}"
            if self.strict:
                raise FastPathError(f"CUDA graphs: {self.failure} (options.strict forbids decoding eagerly)") from error
            log.warning("CUDA graphs: %s; decoding eagerly", self.failure, exc_info=True)
            return False
        self.graphs[(rows, length)] = graph
        return True

    def _reserved_growth(self):
        """A function giving the device memory reserved since now (what the captures have taken; 0 off CUDA)."""
        if self.device.type != "cuda":
            return lambda: 0
        start = torch.cuda.memory_reserved(self.device)
        return lambda: torch.cuda.memory_reserved(self.device) - start
