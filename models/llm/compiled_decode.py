"""Lean decode steps with the small ops between the matmuls compiled by torch.compile (inductor, CPU).

A lone decode step of a small model spends about half its CPU time dispatching some 35 small ops per layer (RMSNorm
with its casts, rotary, residual adds, the MLP's activation) at microseconds each (docs/benchmarks.md, "One stream:
where a decode step goes"). `CompiledDecoder` runs each layer as one compiled region from the attention output of
layer i to the rotated q/k/v of layer i + 1 (o_proj, residual, norm, MLP, residual, norm, q/k/v, rotary), with the
linears as extern calls (the int4 kernel or a plain matmul). The KV cache write and the decode attention stay eager
(attention._decode, with its scattered rows, windows and length runs), and so does the LM head (inductor cannot
lower the packed bf16 head).

Weights are arguments of the compiled functions, not module attributes, so one graph serves every layer: the
compile costs about one layer's, not thirty. It runs in a background thread (`start`) while the eager lean decoder
serves; steps switch to the compiled regions once they are ready. Inductor's FX graph cache keeps the generated code
on disk (TORCHINDUCTOR_CACHE_DIR, set to the server's cache folder), so a later start skips the C++ build.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.llm import attention
from models.llm.attention import StepBatch
from models.llm.cpu_int4 import GROUP, SMALL_ROWS, Int4DecodeLinear
from models.llm.lean_decode import FastDecoder

log = logging.getLogger(__name__)

# A linear's weights as arguments of a compiled region: ("int4", packed, scales_zeros, bias) or ("dense", w, bias).
Weights = tuple


def linear_weights(layer: nn.Module) -> Weights | None:
    """The tensors that compute `layer` for calls of at most SMALL_ROWS rows, or None for a kind we cannot compile."""
    if isinstance(layer, Int4DecodeLinear):
        return (layer.packed, layer.scales_zeros, layer.bias)
    if type(layer) is nn.Linear:
        return (layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
    return None


def _linear(x: torch.Tensor, w: Weights) -> torch.Tensor:
    """x [R, K] -> [R, N]; the tuple's length (fixed per call site) picks the kernel at trace time."""
    if len(w) == 3:
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), w[0], GROUP, w[1])
        return out if w[2] is None else out + w[2]
    return F.linear(x, w[0], w[1])


def _rms(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm: float32 statistics, the weight applied in the input's dtype."""
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(h.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class _Regions:
    """The two region functions of a decoder layer stack (geometry fixed, weights passed in); compiled or eager."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, eps: float):
        self.heads, self.kv_heads, self.head_dim, self.eps = num_heads, num_kv_heads, head_dim, eps

    def qkv(self, h, cos, sin, norm, q, k, v):
        """h [B, E] -> rotated q [B, Hq, D], k and v [B, Hkv, D] of the layer whose weights are given."""
        rows = h.shape[0]
        x = _rms(h, norm, self.eps)
        q = _rotate(_linear(x, q).view(rows, self.heads, self.head_dim), cos, sin)
        k = _rotate(_linear(x, k).view(rows, self.kv_heads, self.head_dim), cos, sin)
        return q, k, _linear(x, v).view(rows, self.kv_heads, self.head_dim)

    def finish(self, h, attn, o, norm, gate, up, down):
        """The rest of a layer after attention: h [B, E], attn [B, Hq, D] -> h [B, E]."""
        h = h + _linear(attn.reshape(h.shape[0], -1), o)
        x = _rms(h, norm, self.eps)
        return h + _linear(F.silu(_linear(x, gate)) * _linear(x, up), down)

    def bridge(self, h, attn, o, norm, gate, up, down, cos, sin, next_norm, q, k, v):
        """finish() of layer i, then qkv() of layer i + 1, as one region: (h, q, k, v)."""
        h = self.finish(h, attn, o, norm, gate, up, down)
        return (h, *self.qkv(h, cos, sin, next_norm, q, k, v))


class CompiledDecoder:
    """FastDecoder's contract (`decoder(input_ids [B], positions [B], batch)` -> logits [B, V]); steps of at most
    SMALL_ROWS rows run the compiled regions once `ready`, every other step the eager lean decoder."""

    def __init__(self, eager: FastDecoder, regions: _Regions):
        self.eager = eager
        self.regions = regions
        self.compiled: _Regions | None = None  # compiled functions once ready
        self.compile_seconds: float | None = None
        self.compile_error: str | None = None
        self.compiled_steps = 0  # steps that ran the compiled regions
        self._weights: list[dict[str, Any]] | None = None  # layer_weights() as of the first compiled step
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.compiled is not None

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: StepBatch) -> torch.Tensor:
        fns = self.compiled
        if fns is None or input_ids.shape[0] > SMALL_ROWS:
            return self.eager(input_ids, positions, batch)
        self.compiled_steps += 1
        return self.run(fns, input_ids, positions, batch)

    def run(self, fns: Any, input_ids: torch.Tensor, positions: torch.Tensor, batch: StepBatch) -> torch.Tensor:
        """One decode step through `fns` (compiled or the plain _Regions, which computes the same)."""
        if self._weights is None:  # read once, at the first step (~1 ms a step to re-read): replace weights before
            self._weights = layer_weights(self.eager)
        eager, layers = self.eager, self._weights
        batch.attention_calls += len(layers)
        h = eager.embed(input_ids)  # [B, E]
        cos, sin = eager.rotary(h, positions[None])  # [1, B, D] each
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [B, 1, D]: broadcast over heads
        first = layers[0]
        q, k, v = fns.qkv(h, cos, sin, first["norm"], first["q"], first["k"], first["v"])
        for index, w in enumerate(layers):
            batch.cache.write(index, batch.write_slots, batch.write_positions, k, v)
            attn = attention._decode(batch, index, q.transpose(0, 1), w["scaling"], w["window"])  # [B, Hq, D]
            if index + 1 < len(layers):
                nxt = layers[index + 1]
                h, q, k, v = fns.bridge(h, attn, w["o"], w["post_norm"], w["gate"], w["up"], w["down"], cos, sin,
                                        nxt["norm"], nxt["q"], nxt["k"], nxt["v"])
            else:
                h = fns.finish(h, attn, w["o"], w["post_norm"], w["gate"], w["up"], w["down"])
        return eager.head(eager.norm(h))  # [B, V]

    def start(self, cache_dir: str | None, background: bool = True) -> None:
        """Compile the regions (in a daemon thread when `background`) and switch to them when done; a failure
        is logged and leaves the eager lean decoder in place."""
        if cache_dir:
            _use_cache_dir(os.path.join(cache_dir, "inductor"))
        if not background:
            self._compile()
            return
        self._thread = threading.Thread(target=self._compile, name="compile-decode", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a background compile; True when the compiled regions are in use."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.ready

    def _compile(self) -> None:
        started = time.perf_counter()
        try:
            regions = self.regions
            fns = _Compiled(regions)
            with torch.inference_mode():
                for rows in (1, 2):  # rows == 1 is specialised by dynamo; 2 gives the graph for 2..SMALL_ROWS
                    self._warm_up(fns, rows)
                reason = self._disagreement(fns)
            if reason is not None:
                raise RuntimeError(reason)
        except Exception as e:  # noqa: BLE001 - any failure keeps the eager path; the reason is logged
            self.compile_error = f"{type(e).__name__}: {e}"
            log.warning("compiled decode unavailable (%s); decoding eagerly", self.compile_error)
            return
        self.compile_seconds = time.perf_counter() - started
        self.compiled = fns
        log.info("compiled decode ready after %.1f s", self.compile_seconds)

    def _disagreement(self, fns: "_Compiled") -> str | None:
        """None when the compiled layer-0 regions give the eager ones' outputs on random input (to the dtype's
        precision), else how far apart they are."""
        (w, nxt), r = layer_weights(self.eager)[:2], self.regions
        dtype = self.eager.embed.weight.dtype
        gen = torch.Generator().manual_seed(0)
        h = torch.randn(3, self.eager.embed.weight.shape[1], generator=gen).to(dtype)
        cos, sin = torch.rand(2, 3, 1, r.head_dim, generator=gen).to(dtype)
        attn = torch.randn(3, r.heads, r.head_dim, generator=gen).to(dtype)
        args = (h, attn, w["o"], w["post_norm"], w["gate"], w["up"], w["down"], cos, sin, nxt["norm"], nxt["q"],
                nxt["k"], nxt["v"])
        tolerance = 1e-4 if dtype == torch.float32 else 2e-2
        for want, got in zip(r.bridge(*args), fns.bridge(*args)):
            error = float((want.float() - got.float()).abs().max()) / max(1.0, float(want.float().abs().max()))
            if error > tolerance:
                return f"compiled regions differ from eager (relative error {error:.2e} > {tolerance})"
        return None

    def _warm_up(self, fns: "_Compiled", rows: int) -> None:
        """Call the compiled region on zeros shaped as a step of `rows` decode rows (no cache is touched), with two
        different layers' weights and distinct cos/sin as a step passes them: dynamo specialises on aliased arguments."""
        (w, nxt), r = layer_weights(self.eager)[:2], self.regions
        embed = self.eager.embed.weight
        h = torch.zeros(rows, embed.shape[1], dtype=embed.dtype)
        cos, sin = torch.zeros(2, rows, 1, r.head_dim, dtype=embed.dtype)
        attn = torch.zeros(rows, r.heads, r.head_dim, dtype=embed.dtype)
        fns.bridge(h, attn, w["o"], w["post_norm"], w["gate"], w["up"], w["down"], cos, sin, nxt["norm"], nxt["q"],
                   nxt["k"], nxt["v"])


class _Compiled:
    """A _Regions whose bridge (29 of a 30-layer model's 31 region calls a step) is torch.compile'd (inductor, with
    precision casts as in eager mode); the first qkv and the last finish stay eager: half the compile for ~1% of a
    step."""

    def __init__(self, regions: _Regions):
        self.qkv, self.finish = regions.qkv, regions.finish
        # compile_threads=1: no pool of compile worker processes (memory) for a single small graph.
        options = {"emulate_precision_casts": True, "compile_threads": 1}
        self.bridge = torch.compile(regions.bridge, dynamic=None, options=options)


def _use_cache_dir(folder: str) -> None:
    """Point inductor's caches at `folder`, unless the environment chose a folder of its own (inductor writes its
    default into TORCHINDUCTOR_CACHE_DIR the first time it looks, so that value does not count as a choice)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder


def layer_weights(decoder: FastDecoder) -> list[dict[str, Any]] | None:
    """Per layer the weights the regions take, or None when a layer has something they do not compute."""
    config = decoder.model.config
    if getattr(config, "hidden_act", "silu") != "silu":
        return None
    layers = []
    for layer in decoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = {name: linear_weights(module) for name, module in
                   (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj), ("o", attn.o_proj),
                    ("gate", mlp.gate_proj), ("up", mlp.up_proj), ("down", mlp.down_proj))}
        if any(w is None for w in linears.values()):
            return None
        window = getattr(attn, "sliding_window", getattr(config, "sliding_window", None))
        layers.append({**linears, "norm": layer.input_layernorm.weight.detach(),
                       "post_norm": layer.post_attention_layernorm.weight.detach(),
                       "scaling": attn.scaling, "window": window})
    return layers


def build_compiled_decoder(decoder: FastDecoder) -> CompiledDecoder | None:
    """A CompiledDecoder over a (probed) FastDecoder, or None when its layers hold a kind of linear or activation the
    regions do not compute, or the norms have no single epsilon."""
    if len(decoder.layers) < 2 or layer_weights(decoder) is None:  # one layer: no bridge to compile
        return None
    eps = {getattr(layer.input_layernorm, "variance_epsilon", None) for layer in decoder.layers}
    eps |= {getattr(layer.post_attention_layernorm, "variance_epsilon", None) for layer in decoder.layers}
    if len(eps) != 1 or None in eps:
        return None
    regions = _Regions(decoder.num_heads, decoder.num_kv_heads, decoder.head_dim, float(eps.pop()))
    return CompiledDecoder(decoder, regions)
