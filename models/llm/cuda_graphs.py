"""Decode-only steps on CUDA as CUDA graph replays (as gpt-fast and vLLM do): one launch instead of thousands.

A graph is captured lazily per (slot bucket S, length bucket L), the first time a step needs it, into one shared
memory pool. A graph's forward always has S packed tokens, row i being slot i: rows of slots that are not decoding
carry a dummy token written at position slot_len - 1 (a position no live sequence has reached, since a sequence
that long is finished, and one written by a real token before any read) and attend only to key 0. The decode
attention reads keys[:S, :, :L] with the mask built inside the graph from the static `context_lens` buffer.
Inputs are copied into one static buffer before each replay, from pinned memory without waiting for the device;
the output logits [S, V] are indexed by the real slots.

Only ever constructed on CUDA. If a model cannot be captured (a host sync inside its forward, for instance), the
decoder logs why, disables itself, and the runner stays eager.
"""
from __future__ import annotations

import logging

import torch

from models.llm.attention import StepBatch
from models.llm.device_io import copy_into, upload
from models.llm.kv_cache import SlotKVCache
from models.llm.request import EngineRequest

log = logging.getLogger(__name__)

MIN_LEN_BUCKET = 256


def slot_buckets(num_slots: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8, up to num_slots (always included)."""
    buckets = [b for b in (1, 2, 4) if b < num_slots] + list(range(8, num_slots, 8))
    return buckets + [num_slots]


def len_buckets(slot_len: int) -> list[int]:
    """Powers of two from MIN_LEN_BUCKET, capped by (and ending at) slot_len."""
    buckets, b = [], MIN_LEN_BUCKET
    while b < slot_len:
        buckets.append(b)
        b *= 2
    return buckets + [slot_len]


class CudaGraphDecoder:
    def __init__(self, forward, cache: SlotKVCache):
        self.forward = forward  # SlotModelForward
        self.cache = cache
        self.device = cache.keys[0].device
        n = cache.num_slots
        self.slot_buckets = slot_buckets(n)
        self.len_buckets = len_buckets(cache.slot_len)
        long = dict(dtype=torch.long, device=self.device)
        # The replay's inputs, column i for slot i, in one buffer so that a step fills them with one copy.
        self.inputs = torch.zeros(3, n, **long)  # [3, n]: input ids, positions, context lengths
        self.inputs[1].fill_(cache.slot_len - 1)
        self.input_ids = self.inputs[0:1]  # [1, n]
        self.positions = self.inputs[1:2]  # [1, n]
        self.context_lens = self.inputs[2]  # [n]
        self.write_slots = torch.arange(n, **long)  # [n]
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, StepBatch]] = {}
        self.pool = None
        self.enabled = True

    def run(self, decodes: list[EngineRequest]) -> torch.Tensor | None:
        """Logits [B, V] of `decodes` (sorted by slot) from a graph replay; None when graphs are off."""
        if not self.enabled or not decodes:
            return None
        view_slots = decodes[-1].slot + 1
        view_len = max(r.num_computed + 1 for r in decodes)
        key = (next(b for b in self.slot_buckets if b >= view_slots), next(b for b in self.len_buckets if b >= view_len))
        self._fill(decodes, key[0])
        entry = self.graphs.get(key) or self._capture(*key)
        if entry is None:
            return None
        graph, logits, _ = entry
        graph.replay()
        slots = [r.slot for r in decodes]
        if slots == list(range(len(slots))):
            return logits[: len(slots)].clone()  # [B, V], a copy: the next replay overwrites `logits`
        return logits[upload(slots, torch.long, self.device)]  # [B, V], a copy too

    def _fill(self, decodes: list[EngineRequest], rows: int) -> None:
        ids, positions, lens = [0] * rows, [self.cache.slot_len - 1] * rows, [0] * rows
        for r in decodes:
            ids[r.slot] = r.token_ids[r.num_computed]
            positions[r.slot] = r.num_computed
            lens[r.slot] = r.num_computed + 1
        copy_into(self.inputs[:, :rows], torch.tensor([ids, positions, lens], dtype=torch.long))  # [3, rows]

    def _batch(self, rows: int, length: int) -> StepBatch:
        return StepBatch(cache=self.cache, write_slots=self.write_slots[:rows], write_positions=self.positions[0, :rows],
                         num_decode=rows, decode_rows=None, view_slots=rows, view_len=length,
                         context_lens=self.context_lens[:rows])

    def _capture(self, rows: int, length: int):
        ids, positions = self.input_ids[:, :rows], self.positions[:, :rows]
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):  # warm up outside the graph (lazy inits, library workspaces)
                for _ in range(2):
                    self.forward(ids, positions, self._batch(rows, length), keep=None)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            batch = self._batch(rows, length)  # fresh: its masks must be computed inside the graph
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                logits = self.forward(ids, positions, batch, keep=None)  # [rows, V]
            self.pool = graph.pool()
        except Exception:  # noqa: BLE001 - graphs are an optimisation: stay correct, eager
            log.warning("CUDA graph capture failed for %d slots x %d tokens; decoding eagerly from now on",
                        rows, length, exc_info=True)
            self.enabled = False
            return None
        log.info("captured a CUDA graph for decode: %d slots x %d tokens", rows, length)
        self.graphs[(rows, length)] = (graph, logits, batch)
        return self.graphs[(rows, length)]
