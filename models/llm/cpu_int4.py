"""Lossless int4 weights for the small-row (decode) matmuls of models whose weights are already 4-bit, on CPU.

A decode step of a few sequences reads every weight once for a handful of rows: it is bound by memory traffic, not
arithmetic. SmolLM2-135M from its GGUF (Q4_1) is dequantized to float32 on load and then runs in bf16: 270 MB of
weights read per step, about 40 ms on this 2-core box. Q4_1 stores each run of 32 weights along a row as
`d * q + m` with q in 0..15, so the dequantized float32 weights are exactly what PyTorch's CPU int4 kernel
(`_weight_int4pack_mm_for_cpu`: groups of 32, w = (q - 8) * scale + zero) represents. Re-deriving the 4-bit codes
from each group's min and max gives back the same weights (checked per layer; a layer that does not round-trip
stays as it is), at a quarter of the bytes. Measured in the engine (2 cores, SmolLM2, bf16 activations): one
sequence 22 -> 44-46 tokens/s, 4 sequences 71-76 -> 101-138, 8 about even (146-160 vs 134-151), 16 even; so calls
of at most SMALL_ROWS rows take the int4 path and larger ones (batched decodes, prefill) the layer's own path.

Applies to no model whose weights are not already 4-bit: nothing is quantized that was not.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from models.llm import weight_cache

log = logging.getLogger(__name__)

GROUP = 32  # weights per (scale, zero) pair along a row, as in GGUF's Q4_0/Q4_1 blocks
SMALL_ROWS = 8  # calls with at most this many rows use the int4 weights (see the measurements above)
# A group round-trips when every weight comes back within this fraction of the group's range (float32 arithmetic
# on d * q + m; 4-bit rounding of anything else is off by up to 1/30 of the range).
ROUND_TRIP_TOLERANCE = 1e-5


class Int4Weight:
    """A [N, K] weight as packed 4-bit codes plus per-group (scale, zero) pairs, for _weight_int4pack_mm_for_cpu."""

    def __init__(self, packed: torch.Tensor, scales_zeros: torch.Tensor, out_features: int, in_features: int):
        self.packed = packed  # opaque uint8 layout from _convert_weight_to_int4pack_for_cpu
        self.scales_zeros = scales_zeros  # [K / GROUP, N, 2] float32: w = (q - 8) * scale + zero
        self.out_features = out_features
        self.in_features = in_features


def int4_supported() -> bool:
    return all(hasattr(torch.ops.aten, op) for op in ("_weight_int4pack_mm_for_cpu",
                                                       "_convert_weight_to_int4pack_for_cpu"))


def lossless_int4(weight: torch.Tensor) -> Int4Weight | None:
    """The weight as int4 groups of GROUP when it round-trips exactly (see ROUND_TRIP_TOLERANCE), else None (also
    when the kernel cannot take its shape: output features in multiples of 16, input features of GROUP)."""
    if weight.dim() != 2 or weight.shape[0] % 16 or weight.shape[1] % GROUP or weight.device.type != "cpu":
        return None
    w = weight.detach().float()
    n, k = w.shape
    groups = w.reshape(n, k // GROUP, GROUP)  # [N, K/G, G]
    low = groups.amin(-1, keepdim=True)
    span = groups.amax(-1, keepdim=True) - low
    scale = torch.where(span > 0, span / 15, torch.ones_like(span))  # [N, K/G, 1]
    codes = ((groups - low) / scale).round().clamp(0, 15)
    if ((codes * scale + low - groups).abs() > ROUND_TRIP_TOLERANCE * span).any():
        return None
    zero = low + 8 * scale  # the kernel computes (q - 8) * scale + zero
    scales_zeros = torch.stack([scale[..., 0], zero[..., 0]], dim=-1).transpose(0, 1).contiguous()  # [K/G, N, 2]
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.reshape(n, k).to(torch.int32), 1)
    return Int4Weight(packed, scales_zeros, n, k)


def capture_lossless_int4(model: nn.Module) -> dict[str, Int4Weight]:
    """Int4 forms of the model's nn.Linear weights that round-trip, by module name (call it on float32 weights,
    before any cast to half precision rounds them)."""
    if not int4_supported():
        return {}
    found = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module) is nn.Linear:
                int4 = lossless_int4(module.weight)
                if int4 is not None:
                    found[name] = int4
    return found


def cached_lossless_int4(model: nn.Module, folder: str) -> dict[str, Int4Weight]:
    """capture_lossless_int4(model) for a model loaded from `folder`: read from the folder's cache file when a load
    before wrote one, else captured and written there (best effort). The file is per torch version (the packed layout
    is the kernel's own); it must only sit beside the weights it was captured from (a GGUF conversion's folder)."""
    if not int4_supported():
        return {}
    path = os.path.join(folder, f"int4-torch-{torch.__version__}.safetensors")
    return weight_cache.cached(path, lambda: capture_lossless_int4(model), _write_int4, _read_int4, "int4")


def _write_int4(path: str, found: dict[str, Int4Weight]) -> None:
    tensors = {}
    for name, w in found.items():
        tensors[f"{name}.packed"], tensors[f"{name}.scales_zeros"] = w.packed, w.scales_zeros
    weight_cache.save(path, tensors, {name: [w.out_features, w.in_features] for name, w in found.items()})


def _read_int4(path: str) -> dict[str, Int4Weight]:
    shapes, tensors = weight_cache.load(path)
    return {name: Int4Weight(tensors[f"{name}.packed"], tensors[f"{name}.scales_zeros"], n, k)
            for name, (n, k) in shapes.items()}


class Int4DecodeLinear(nn.Module):
    """A linear layer that runs calls of at most SMALL_ROWS rows on int4 weights and larger ones on `large` (the
    layer as it was: nn.Linear or cpu_linear.PackedLinear)."""

    def __init__(self, large: nn.Module, int4: Int4Weight, dtype: torch.dtype, bias: torch.Tensor | None):
        super().__init__()
        self.large = large
        self.in_features = int4.in_features
        self.out_features = int4.out_features
        self.packed = int4.packed
        self.scales_zeros = int4.scales_zeros.to(dtype)  # the kernel wants the activations' dtype
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > SMALL_ROWS:
            return self.large(x)
        flat = x.reshape(rows, self.in_features).contiguous()  # [R, K]
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales_zeros)  # [R, N]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def attach_int4(model: nn.Module, captured: dict[str, Int4Weight]) -> int:
    """Wrap each captured layer (by name; already packed or not) in Int4DecodeLinear; return how many. A layer
    whose int4 output disagrees with its own path on a self-check leaves the model untouched."""
    if not captured:
        return 0
    modules = dict(model.named_modules())
    targets = []
    for name, int4 in captured.items():
        layer = modules.get(name)
        if layer is None:
            continue
        parent_name, _, child = name.rpartition(".")
        dtype = activation_dtype(layer)
        if dtype is None:
            continue
        bias = getattr(layer, "bias", None)
        targets.append((modules[parent_name] if parent_name else model, child,
                        Int4DecodeLinear(layer, int4, dtype, None if bias is None else bias.detach())))
    if not targets or not _agrees(targets[0][2]):
        return 0
    for parent, child, wrapped in targets:
        setattr(parent, child, wrapped)
    return len(targets)


def activation_dtype(layer: nn.Module) -> torch.dtype | None:
    """The dtype the layer computes in: its weight's (nn.Linear), or the one cpu_linear.PackedLinear records."""
    if isinstance(layer, nn.Linear):
        return layer.weight.dtype
    dtype = getattr(layer, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else None


def _agrees(layer: Int4DecodeLinear) -> bool:
    """The int4 path gives the layer's own outputs (to its dtype's precision) on one row."""
    try:
        with torch.inference_mode():
            x = torch.randn(1, 1, layer.in_features, generator=torch.Generator().manual_seed(0))
            x = x.to(layer.scales_zeros.dtype)
            want = layer.large(x).float()
            got = layer(x).float()
    except (RuntimeError, NotImplementedError) as e:
        log.info("int4 CPU matmul unavailable (%s); decoding on the model's own weights", e)
        return False
    tolerance = 1e-4 if layer.scales_zeros.dtype == torch.float32 else 3e-2
    if not torch.allclose(got, want, rtol=tolerance, atol=tolerance * float(want.abs().max())):
        log.warning("int4 CPU matmul disagrees with the layer; decoding on the model's own weights")
        return False
    return True
