"""Run one scheduled step through the model: every sequence of the step in a single forward over the slot cache.

`BatchedModelRunner.execute(work)` packs the step's tokens into one row (decodes first, in slot order, then prefill
chunks), builds the `StepBatch` the slot attention reads, runs the transformers model with that attention, and
returns the last-position logits of each request that samples now (its fed tokens reach the end of its stream).
On CUDA, steps made only of decodes replay CUDA graphs (cuda_graphs.py); elsewhere they go through the lean decode
function of lean_decode.py when the engine attached one; everything else runs the transformers
forward.

`probe_slot_attention` checks, on the loaded model, that packed batched forwards give the logits of ordinary
per-sequence forwards; a model that fails it runs on the per-request fallback (fallback_runner.py).
"""
from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

import torch

from models.llm import attention
from models.llm.attention import BATCH_KWARG, PrefillChunk, StepBatch, split_by_length
from models.llm.device_io import upload
from models.llm.prefix_cache import PrefixCache
from models.llm.kv_cache import KVShape, SlotKVCache
from models.llm.loader import vocab_size_of
from models.llm.request import EngineRequest

if TYPE_CHECKING:
    from models.llm.lean_decode import FastDecoder

log = logging.getLogger(__name__)


class SlotModelForward:
    """Calls a transformers causal LM on a packed row with a StepBatch; returns logits [K, V] of the kept rows."""

    def __init__(self, model: Any):
        self.model = model
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in params
        # A 4D mask is taken as ready-made by transformers' mask creation, which then does no work: slot attention
        # does its own masking and never reads it.
        self._no_mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=self.device)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: StepBatch,
                 keep: torch.Tensor | None) -> torch.Tensor:
        """input_ids/positions [1, N]; keep [K] packed indices to return logits for (None: all N)."""
        kwargs = {BATCH_KWARG: batch}
        if keep is not None and self._keeps_logits:
            kwargs["logits_to_keep"] = keep
        out = self.model(input_ids=input_ids, position_ids=positions, attention_mask=self._no_mask,
                         use_cache=False, **kwargs)
        if batch.attention_calls == 0:
            raise RuntimeError("the model does not pass its forward kwargs on to its attention layers")
        logits = out.logits[0]  # [K, V] (or [N, V] when the model cannot keep rows)
        if keep is not None and not self._keeps_logits:
            logits = logits[keep]
        return logits


class BatchedModelRunner:
    """Owns the slot KV cache and turns scheduled work into one forward (or one CUDA graph replay)."""

    def __init__(self, model: Any, num_slots: int, slot_len: int, cuda_graphs: bool = True,
                 prefix_blocks: int = 0, block_size: int = 16, strict: bool = False, graph_api: Any = None,
                 fast_decoder: "FastDecoder | None" = None, inexact_rows: int = 0):
        """prefix_blocks: blocks of `block_size` tokens for the prefix cache (0: no prefix caching); inexact_rows:
        steps of at most this many tokens compute KV the prefix cache must not publish (prefix_cache.py). On CUDA with
        `cuda_graphs` (or with a fake `graph_api`, in tests) every decode graph is captured here, at load; a capture
        failure turns graphs off with a warning, or raises FastPathError when `strict`. fast_decoder: decode-only
        steps without the transformers forward (lean_decode.py)."""
        self.forward = SlotModelForward(model)
        self.fast_decoder = fast_decoder  # decode-only steps without the transformers forward (lean_decode.py)
        self.device = self.forward.device
        dtype = next(model.parameters()).dtype
        self.cache = SlotKVCache(KVShape.of(model.config), num_slots, slot_len, dtype, self.device)
        self.prefix = PrefixCache(self.cache, prefix_blocks, block_size, inexact_rows) if prefix_blocks > 0 else None
        self.graphs = None
        if cuda_graphs and (self.device.type == "cuda" or graph_api is not None):
            from models.llm.cuda_graphs import CudaGraphDecoder

            self.cache.ensure_initialized(slot_len)  # graphs read every position of their view (no-op on CUDA)
            self.graphs = CudaGraphDecoder(self.forward, self.cache, vocab_size_of(model), dtype, strict, graph_api)
            with torch.inference_mode():
                self.graphs.capture_all()

    def execute(self, work: list[tuple[EngineRequest, int]]) -> tuple[list[EngineRequest], torch.Tensor]:
        """Feed each (request, count) its next `count` tokens; return (requests that sample, their logits [R, V])."""
        decodes = sorted((r for r, n in work if n == 1 and r.num_pending == 1), key=lambda r: r.slot)
        chunks = [(r, n) for r, n in work if not (n == 1 and r.num_pending == 1)]
        if not chunks and self.graphs is not None:
            logits = self.graphs.run(decodes)
            if logits is not None:
                return decodes, logits
        input_ids, positions, batch, keep, sampled = self._pack(decodes, chunks)
        if not chunks and self.fast_decoder is not None:  # the lean decode step (lean_decode.py)
            return sampled, self.fast_decoder(input_ids[0], positions[0], batch)
        return sampled, self.forward(input_ids, positions, batch, keep)

    def _pack(self, decodes: list[EngineRequest], chunks: list[tuple[EngineRequest, int]]):
        """(input_ids [1, N], positions [1, N], StepBatch, keep [K], requests that sample) for one forward."""
        tokens, positions, slots, keep, sampled = [], [], [], [], []
        for r in decodes:
            tokens.append(r.token_ids[r.num_computed])
            positions.append(r.num_computed)
            slots.append(r.slot)
            keep.append(len(tokens) - 1)
            sampled.append(r)
        prefills = []
        for r, n in chunks:
            prefills.append(PrefillChunk(offset=len(tokens), num_tokens=n, slot=r.slot, start=r.num_computed))
            tokens += r.pending_tokens(n)
            positions += range(r.num_computed, r.num_computed + n)
            slots += [r.slot] * n
            if n == r.num_pending:  # the chunk reaches the end of the stream: its last logits give the next token
                keep.append(len(tokens) - 1)
                sampled.append(r)
        view_slots = decodes[-1].slot + 1 if decodes else 0
        lens = [0] * view_slots
        for r in decodes:
            lens[r.slot] = r.num_computed + 1
        decode_slots = [r.slot for r in decodes]
        runs = split_by_length(lens)  # one run (None below) unless contexts differ enough to pay for more calls
        identity = decode_slots == list(range(view_slots))
        # Before anything is written: zeroing never-used positions must not wipe this step's new tokens.
        self.cache.ensure_initialized(max(max(lens, default=0), max(positions) + 1))
        # One upload for every index of the step: [tokens | slots | positions | keep | lens | decode slots].
        sizes = [len(tokens), len(slots), len(positions), len(keep), len(lens), 0 if identity else len(decodes)]
        host = tokens + slots + positions + keep + lens + ([] if identity else decode_slots)
        ids_t, slots_t, positions_t, keep_t, lens_t, rows_t = upload(host, torch.long, self.device).split(sizes)
        batch = StepBatch(
            cache=self.cache, write_slots=slots_t, write_positions=positions_t, num_decode=len(decodes),
            decode_rows=None if identity else rows_t, view_slots=view_slots, view_len=max(lens, default=0),
            context_lens=lens_t if decodes else None, prefills=prefills,
            decode_segments=runs if len(runs) > 1 else None,
        )
        return ids_t[None], positions_t[None], batch, keep_t, sampled


def enable_slot_attention(model: Any) -> str:
    """Switch the model to slot attention; return the implementation it had (to restore on failure)."""
    attention.register()
    previous = model.config._attn_implementation
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attention.ATTENTION_NAME)
    else:
        model.config._attn_implementation = attention.ATTENTION_NAME
    return previous


def restore_attention(model: Any, previous: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(previous)
    else:
        model.config._attn_implementation = previous


def probe_slot_attention(model: Any, vocab_size: int, fast_decoder: "FastDecoder | None" = None) -> str | None:
    """None if slot attention (and `fast_decoder` on the decode-only steps, when given) reproduces the model's own
    logits on a packed prefill/chunk/decode mix; else why not."""
    try:
        if model.config._attn_implementation != attention.ATTENTION_NAME:
            return f"the model kept attention implementation {model.config._attn_implementation!r}"
        return _probe(model, vocab_size, fast_decoder)
    except Exception as e:  # noqa: BLE001 - any failure means "use the fallback"; the reason is logged
        return f"{type(e).__name__}: {e}"


def _probe(model: Any, vocab_size: int, fast_decoder: "FastDecoder | None") -> str | None:
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    a = _ProbeRequest(torch.randint(0, vocab_size, (8,), generator=gen).tolist(), slot=1)
    b = _ProbeRequest(torch.randint(0, vocab_size, (5,), generator=gen).tolist(), slot=0)
    plan = [  # per step: (request, stream length visible so far, tokens fed now)
        [(a, 4, 4), (b, 3, 3)],  # two prefills
        [(b, 4, 1), (a, 6, 2)],  # a decode (slot 0) beside a continued, chunked prefill
        [(a, 7, 1)],  # a decode alone in slot 1 (the view's rows are scattered)
        [(b, 5, 1), (a, 8, 1)],  # two decodes
    ]
    runner = BatchedModelRunner(model, num_slots=2, slot_len=16, cuda_graphs=False, fast_decoder=fast_decoder)
    errors = []
    with torch.inference_mode():
        reference = {id(r): model(input_ids=torch.tensor([r.all], device=device)).logits[0].float() for r in (a, b)}
        for step in plan:
            for r, length, _ in step:
                r.token_ids = r.all[:length]
            sampled, logits = runner.execute([(r, n) for r, _, n in step])
            for r, row in zip(sampled, logits.float()):
                ref = reference[id(r)][len(r.token_ids) - 1]  # [V]
                errors.append(float((row - ref).abs().max()) / max(1.0, float(ref.abs().max())))
            for r, _, n in step:
                r.num_computed += n
    tolerance = 2e-3 if dtype == torch.float32 else 6e-2
    if len(errors) != 7:
        return f"expected 7 sampled rows, got {len(errors)}"
    if max(errors) > tolerance:
        return f"slot attention logits differ from the model's (relative error {max(errors):.2e} > {tolerance})"
    return None


class _ProbeRequest:
    """The few EngineRequest fields the runner reads, with the stream revealed step by step."""

    def __init__(self, tokens: list[int], slot: int):
        self.all = tokens
        self.token_ids: list[int] = []
        self.num_computed = 0
        self.slot = slot

    @property
    def num_pending(self) -> int:
        return len(self.token_ids) - self.num_computed

    def pending_tokens(self, count: int) -> list[int]:
        return self.token_ids[self.num_computed : self.num_computed + count]
