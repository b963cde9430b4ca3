"""A whole decode step in one native call (native/decode_step.c) for Llama-family models whose every decode weight
runs on the native kernels of cpu_native.py.

A lone decode step of SmolLM2-135M through lean_decode.FastDecoder is ~20 ms on this machine, of which ~12 ms are
the matmuls and the rest some 120 kernel calls from Python and ~35 small PyTorch ops per layer (RMSNorm, rotary,
cache write, attention, residuals). `NativeStepDecoder` runs the layers, the final norm and the LM head in C: Python
only embeds the tokens and computes the rotary cos/sin (the model's own modules, whatever rope scaling they apply),
then makes one call. Between the matmuls the step computes in float32 (the PyTorch path rounds to bf16 after each
op), and it writes K and V to the slot cache in the cache's dtype, so later steps, prefill chunks and the prefix
cache read what the PyTorch path would have written there to bf16 precision.

Steps it does not take (more than MAX_ROWS rows, a mixed step) keep the FastDecoder it wraps. `build_native_step`
returns None when any piece is not what the C code computes (a layer not on the native kernels, a bias, another
activation or norm); engine.py then probes it against the model's own logits like the lean path.
"""
from __future__ import annotations

import ctypes
import logging
from typing import Any

import torch
import torch.nn.functional as F

from models.llm.attention import StepBatch
from models.llm.cpu_native import DTYPE_CODES, MAX_ROWS, Kernels, NativeDecodeLinear, NativeWeight
from models.llm.lean_decode import FastDecoder

log = logging.getLogger(__name__)



class _Weight(ctypes.Structure):
    _fields_ = [("qs", ctypes.c_void_p), ("d", ctypes.c_void_p), ("m", ctypes.c_void_p), ("bits", ctypes.c_int),
                ("N", ctypes.c_int), ("K", ctypes.c_int)]


class _Layer(ctypes.Structure):
    _fields_ = [("input_norm", ctypes.c_void_p), ("post_norm", ctypes.c_void_p), ("qkv", _Weight), ("o", _Weight),
                ("gate_up", _Weight), ("down", _Weight), ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p),
                ("window", ctypes.c_int)]


class _Model(ctypes.Structure):
    _fields_ = [("num_layers", ctypes.c_int), ("E", ctypes.c_int), ("Hq", ctypes.c_int), ("Hkv", ctypes.c_int),
                ("D", ctypes.c_int), ("I", ctypes.c_int), ("V", ctypes.c_int), ("S", ctypes.c_int),
                ("T", ctypes.c_int),
                ("norm_dtype", ctypes.c_int), ("cache_dtype", ctypes.c_int), ("eps", ctypes.c_float),
                ("scaling", ctypes.c_float), ("layers", ctypes.POINTER(_Layer)), ("final_norm", ctypes.c_void_p),
                ("head", _Weight)]


def _weight(w: NativeWeight) -> _Weight:
    return _Weight(w.qs.data_ptr(), w.d.data_ptr(), w.m.data_ptr() if w.m is not None else None, w.bits,
                   w.out_features, w.in_features)


class NativeStepDecoder:
    """`decoder(input_ids [B], positions [B], batch)` -> logits [B, V] float32, as FastDecoder, in one native call
    for B <= MAX_ROWS (FastDecoder otherwise)."""

    def __init__(self, lean: FastDecoder, kernels: Kernels, weights: list[tuple], head: NativeWeight,
                 norms: list[tuple[torch.Tensor, torch.Tensor]], final_norm: torch.Tensor, eps: float,
                 scaling: float, windows: list[int], intermediate: int):
        self.lean = lean
        self.model = lean.model  # what probe_slot_attention and the engine read of a decoder
        self.layers = lean.layers
        self._keep = (weights, head, norms, final_norm)  # the tensors the C struct points into
        self._step = kernels.lib.os_decode_step
        self._step.argtypes = [ctypes.POINTER(_Model), ctypes.c_int] + [ctypes.c_void_p] * 7
        self._step.restype = ctypes.c_int
        layers = (_Layer * len(weights))()
        for layer, (qkv, o, gate_up, down), (input_norm, post_norm), window in zip(layers, weights, norms, windows):
            layer.input_norm, layer.post_norm = input_norm.data_ptr(), post_norm.data_ptr()
            layer.qkv, layer.o, layer.gate_up, layer.down = _weight(qkv), _weight(o), _weight(gate_up), _weight(down)
            layer.window = window
        self._layers = layers
        self.num_heads, self.num_kv_heads, self.head_dim = lean.num_heads, lean.num_kv_heads, lean.head_dim
        self.vocab = head.out_features
        self.struct = _Model(len(weights), head.in_features, lean.num_heads, lean.num_kv_heads, lean.head_dim,
                             # S, T and the cache's dtype: bound to the step's cache in _bind
                             intermediate, head.out_features, 0, 0, DTYPE_CODES[final_norm.dtype], 0, eps, scaling,
                             layers, final_norm.data_ptr(), _weight(head))
        check = kernels.lib.os_step_check
        check.argtypes, check.restype = [ctypes.POINTER(_Model)], ctypes.c_int
        code = check(ctypes.byref(self.struct))
        if code != 0:
            raise ValueError(f"decode_step.c cannot compute this geometry (os_step_check: {code})")
        self._scratch_bytes = kernels.lib.os_step_scratch_bytes
        self._scratch_bytes.argtypes, self._scratch_bytes.restype = [ctypes.POINTER(_Model), ctypes.c_int], \
            ctypes.c_size_t
        self._cache = None  # the SlotKVCache the struct points into (rebound when a step brings another)
        self._scratch = None
        self.kernels = kernels
        # Inside steps of one row (False) and of several (True), split matmuls reading at least this many bytes of
        # weights with the helper thread, which polls for the step's duration (decode_matmul.c,
        # os_set_step_helper_min_bytes); 0: the helper only for the LM head, as outside a step. 0 for both by default:
        # the engine alone gains (docs/benchmarks.md: 8 rows 43.2 -> 26.2 ms, one row 8.7 -> 7.1 ms), but through the
        # server, on two cores, with it on steps of several rows only, 8 streams moved by -8% to +16% and one stream
        # was 11-34% slower in 6 of 7 alternating pairs (unexplained: its steps take the same path either way).
        self.helper_bytes = {False: 0, True: 0}
        self._helper_now = 0

    def _bind(self, cache) -> bool:
        """Point the struct at `cache`'s tensors; False when the cache is not laid out as decode_step.c reads it."""
        if cache is self._cache:
            return True
        shape = (cache.num_slots, self.num_kv_heads, cache.slot_len, self.head_dim)
        tensors = (*cache.keys, *cache.values)
        if cache.keys[0].dtype not in DTYPE_CODES or cache.keys[0].device.type != "cpu" or any(
                tuple(t.shape) != shape or not t.is_contiguous() or t.dtype != cache.keys[0].dtype for t in tensors):
            return False
        for layer, keys, values in zip(self._layers, cache.keys, cache.values):
            layer.k_cache, layer.v_cache = keys.data_ptr(), values.data_ptr()
        self.struct.S, self.struct.T = cache.num_slots, cache.slot_len
        self.struct.cache_dtype = DTYPE_CODES[cache.keys[0].dtype]
        self._scratch = torch.empty(int(self._scratch_bytes(ctypes.byref(self.struct), MAX_ROWS)), dtype=torch.uint8)
        self._cache = cache
        return True

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: StepBatch) -> torch.Tensor:
        rows = input_ids.shape[0]
        if rows > MAX_ROWS or rows == 0 or not self._bind(batch.cache):
            return self.lean(input_ids, positions, batch)
        batch.attention_calls += len(self.layers)
        h = self.lean.embed(input_ids).float().contiguous()  # [B, E]
        cos, sin = self.lean.rotary(h, positions[None])  # [1, B, D] each, float32
        cos, sin = cos[0].float().contiguous(), sin[0].float().contiguous()
        slots = batch.write_slots[:rows].to(torch.long).contiguous()  # [B]; decode tokens come first in the row
        where = batch.write_positions[:rows].to(torch.long).contiguous()  # [B]
        logits = torch.empty(rows, self.vocab, dtype=torch.float32)  # [B, V]
        helper = self.helper_bytes[rows > 1]
        if helper != self._helper_now:
            self.kernels.use_step_helper(helper)
            self._helper_now = helper
        if self._step(ctypes.byref(self.struct), rows, h.data_ptr(), cos.data_ptr(), sin.data_ptr(), slots.data_ptr(),
                      where.data_ptr(), logits.data_ptr(), self._scratch.data_ptr()) != 0:
            raise IndexError(f"decode step: a slot or position is outside the KV cache ({slots.tolist()}, "
                             f"{where.tolist()}; {self.struct.S} slots x {self.struct.T} positions)")
        return logits


def _rms_norm(module: Any) -> torch.Tensor | None:
    """The weight of a transformers Llama-style RMSNorm (weight * x / sqrt(mean(x^2) + eps)), else None."""
    weight = getattr(module, "weight", None)
    if not type(module).__name__.endswith("RMSNorm") or weight is None or not hasattr(module, "variance_epsilon"):
        return None
    return weight.detach().contiguous() if weight.dtype in DTYPE_CODES and weight.dim() == 1 else None


def _is_silu(act: Any) -> bool:
    x = torch.linspace(-8, 8, 97)
    try:
        with torch.inference_mode():
            return bool(torch.allclose(act(x), F.silu(x), rtol=1e-6, atol=1e-6))
    except Exception:  # noqa: BLE001 - anything else is not SiLU
        return False


def build_native_step(lean: FastDecoder, kernels: Kernels | None) -> NativeStepDecoder | None:
    """A NativeStepDecoder over `lean` when every decode weight of every layer and the LM head run on the native
    kernels (fused q/k/v and gate/up), the norms are RMSNorms of one eps and the MLP's activation is SiLU; else None
    (the reason logged)."""
    if kernels is None:
        return None
    model = lean.model
    head = lean.head
    reasons = []
    if not isinstance(head, NativeDecodeLinear):
        reasons.append("the LM head is not on the native kernels")
    weights, norms, windows, eps = [], [], [], set()
    for index, layer in enumerate(lean.layers):
        attn, mlp = layer.self_attn, layer.mlp
        o, down = getattr(attn, "o_proj", None), getattr(mlp, "down_proj", None)
        qkv, gate_up = lean.qkv[index], lean.gate_up[index]
        if qkv is None or gate_up is None or not isinstance(o, NativeDecodeLinear) or not isinstance(
                down, NativeDecodeLinear):
            reasons.append(f"layer {index}: not every projection is on the native kernels")
            break
        pair = (_rms_norm(layer.input_layernorm), _rms_norm(layer.post_attention_layernorm))
        if pair[0] is None or pair[1] is None:
            reasons.append(f"layer {index}: a norm is not an RMSNorm")
            break
        eps.update(float(n.variance_epsilon) for n in (layer.input_layernorm, layer.post_attention_layernorm))
        if not _is_silu(mlp.act_fn):
            reasons.append("the MLP's activation is not SiLU")
            break
        window = getattr(attn, "sliding_window", getattr(model.config, "sliding_window", None))
        weights.append((qkv.weight, o.weight, gate_up.weight, down.weight))
        norms.append(pair)
        windows.append(int(window or 0))
    final_norm = _rms_norm(lean.norm)
    if final_norm is None:
        reasons.append("the final norm is not an RMSNorm")
    else:
        eps.add(float(lean.norm.variance_epsilon))
    if not reasons and (len(eps) != 1 or len({n.dtype for pair in norms for n in pair} | {final_norm.dtype}) != 1):
        reasons.append("the norms differ in eps or dtype")
    scaling = getattr(lean.layers[0].self_attn, "scaling", None)
    if not reasons and not isinstance(scaling, float):
        reasons.append("no attention scaling")
    if reasons:
        log.info("%s: no native decode step (%s); lean decode serves", type(model).__name__, reasons[0])
        return None
    intermediate = weights[0][2].out_features // 2
    try:
        return NativeStepDecoder(lean, kernels, weights, head.weight, norms, final_norm, eps.pop(), scaling,
                                 windows, intermediate)
    except ValueError as e:
        log.info("%s: no native decode step (%s); lean decode serves", type(model).__name__, e)
        return None


def checked_native_step(lean: FastDecoder, kernels: Kernels, vocab_size: int) -> NativeStepDecoder | None:
    """build_native_step, kept only when the slot-attention probe passes with it (else None, reason logged)."""
    from models.llm.model_runner import probe_slot_attention

    native = build_native_step(lean, kernels)
    if native is None:
        return None
    reason = probe_slot_attention(lean.model, vocab_size, native)
    if reason is not None:
        log.warning("%s: the native decode step disagrees with the model (%s); lean decode serves",
                    type(lean.model).__name__, reason)
        return None
    return native
