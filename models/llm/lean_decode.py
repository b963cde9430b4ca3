"""Decode-only steps of Llama-family models as one lean function over the slot cache.

A transformers forward spends part of a small decode step outside the matmuls: per-module Python, kwargs plumbing,
mask and cache bookkeeping. `FastDecoder` calls the same modules (RMSNorm, rotary, projections, MLP) and slot
attention's decode as a flat loop over the layers. On CPU with int4 decode weights, compiled_decode.py runs the same
steps with each layer's small ops compiled (torch.compile of this whole function fails on the packed LM head: see
docs/benchmarks.md, "One stream: where a decode step goes").

Only decode steps take this path (one new token per sequence); prefill and mixed steps keep the transformers
forward. `build_fast_decoder` returns None for architectures it does not know, and `probe_fast_decoder` checks the
path against the model's own logits at load: a model that fails it keeps the transformers forward.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from models.llm import attention
from models.llm.attention import StepBatch
from models.llm.cpu_native import MAX_ROWS, fuse

log = logging.getLogger(__name__)

# Decoder layers of these model types are pre-norm attention + gated MLP with rotary q/k and nothing else (no
# q/k norms, no soft-capping): exactly what `FastDecoder` computes.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class FastDecoder:
    """`decoder(input_ids [B], positions [B], batch)` -> logits [B, V] for B decode tokens, as the model's forward
    with slot attention gives them; `batch` is the runner's StepBatch for the step (decode tokens only)."""

    def __init__(self, model: Any):
        self.model = model
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm = inner.norm
        self.head = model.get_output_embeddings()
        self.layers = list(inner.layers)
        # With native decode kernels (cpu_native.py): q/k/v and gate/up as one kernel call each, per layer (else None)
        self.qkv = [fuse(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
                    for layer in self.layers]
        self.gate_up = [fuse(layer.mlp.gate_proj, layer.mlp.up_proj) if _gated_mlp(layer.mlp) else None
                        for layer in self.layers]
        first = self.layers[0].self_attn
        self.head_dim = int(first.head_dim)
        config = model.config
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.num_heads)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: StepBatch) -> torch.Tensor:
        batch.attention_calls += len(self.layers)
        h = self.embed(input_ids)  # [B, E]
        cos, sin = self.rotary(h, positions[None])  # [1, B, D] each
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [B, 1, D]: broadcast over heads
        for index, layer in enumerate(self.layers):
            h = self._layer_step(layer, index, h, cos, sin, batch)
        return self.head(self.norm(h))  # [B, V]

    def _layer_step(self, layer, index: int, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    batch: StepBatch) -> torch.Tensor:
        """One decoder layer for B decode tokens: h [B, E] -> [B, E]."""
        attn = layer.self_attn
        rows = h.shape[0]
        x = layer.input_layernorm(h)
        fused = self.qkv[index] if rows <= MAX_ROWS else None
        q, k, v = fused(x) if fused is not None else (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
        q = q.view(rows, self.num_heads, self.head_dim)  # [B, Hq, D]
        k = k.view(rows, self.num_kv_heads, self.head_dim)  # [B, Hkv, D]
        v = v.view(rows, self.num_kv_heads, self.head_dim)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        batch.cache.write(index, batch.write_slots, batch.write_positions, k, v)
        # Qwen2 keeps its window per layer on the module (None for full-attention layers); Mistral only in its config.
        window = getattr(attn, "sliding_window", getattr(self.model.config, "sliding_window", None))
        out = attention._decode(batch, index, q.transpose(0, 1), attn.scaling, window)  # [B, Hq, D]
        h = h + attn.o_proj(out.reshape(rows, self.num_heads * self.head_dim))
        x = layer.post_attention_layernorm(h)
        fused = self.gate_up[index] if rows <= MAX_ROWS else None
        if fused is None:
            return h + layer.mlp(x)
        gate, up = fused(x)  # [B, I] each
        return h + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)  # what LlamaMLP.forward computes


def _gated_mlp(mlp: Any) -> bool:
    """The Llama/Qwen2/Mistral MLP: down_proj(act_fn(gate_proj(x)) * up_proj(x))."""
    return all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))


def build_fast_decoder(model: Any) -> FastDecoder | None:
    """A FastDecoder for a supported architecture (see SUPPORTED_MODEL_TYPES), else None."""
    config = model.config
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return None
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "rotary_emb", "norm", "layers")
    if inner is None or not all(hasattr(inner, name) for name in needed) or not len(inner.layers):
        return None
    attn = inner.layers[0].self_attn
    if not all(hasattr(attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")):
        return None
    return FastDecoder(model)


def checked_fast_decoder(model: Any, vocab_size: int) -> FastDecoder | None:
    """build_fast_decoder, kept only when the slot-attention probe passes with it (else None, reason logged)."""
    from models.llm.model_runner import probe_slot_attention

    decoder = build_fast_decoder(model)
    if decoder is None:
        log.info("%s: no lean decode path for model type %r; decoding through the transformers forward",
                 type(model).__name__, getattr(model.config, "model_type", None))
        return None
    reason = probe_slot_attention(model, vocab_size, decoder)
    if reason is not None:
        log.warning("%s: lean decode path disagrees with the model (%s); decoding through the transformers forward",
                    type(model).__name__, reason)
        return None
    return decoder
