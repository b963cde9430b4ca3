"""Native decode matmuls on CPU for weights that are already 4- or 8-bit: native/decode_matmul.c, built with the
system's C compiler on first use, cached on disk, called through ctypes.

A decode step of one sequence reads every weight once for one row: it is bound by the bytes read and by how fast
they stream. PyTorch's int4 kernel (cpu_int4.py) streams SmolLM2's 210 int4 matmuls at about 7 GB/s on this
machine and its LM head is bf16 (56 MB a token, the GGUF's Q8_0 embedding widened). This kernel reads the GGUF's
own blocks (Q4_1: 4-bit codes with fp16 d and m per 32 weights; Q8_0: 8-bit codes with an fp16 d), quantizes the
activations per block of 32 to int8 as llama.cpp does, multiplies with AVX-512 VNNI and prefetches ahead of the
stream (measured on one row: 6.5 -> 14 GB/s). Its error against float64 (relative L2 ~6e-3 on 4-bit layers) is
below that of PyTorch's int4 path with bf16 activations (~2e-2), so it replaces that path for bf16 models; a float32
model keeps PyTorch's kernel, which is exact to float32.

Nothing here is required: without x86-64 AVX-512 VNNI, a C compiler, or when the built library fails its
self-check, `load_kernels` returns None and decoding uses PyTorch's kernels as before.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import torch
from torch import nn

from models.llm import weight_cache
from models.llm.cpu_int4 import SMALL_ROWS, activation_dtype

log = logging.getLogger(__name__)
assert SMALL_ROWS <= 8, "decode_matmul.c accumulates at most 8 rows"

NATIVE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native")
SOURCES = ("decode_matmul.c", "decode_step.c")  # one library; decode_step.c is native_step.py's
HEADERS = ("decode_matmul.h",)
ABI_VERSION = 2  # as decode_matmul.h's
WEIGHTS_VERSION = 1  # of the cached native weights (native-v1.safetensors)
BLOCK = 32  # weights per scale, as in GGUF's Q4_0/Q4_1/Q8_0 blocks
CFLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mf16c", "-mfma", "-mavx2", "-shared",
          "-fPIC", "-pthread")
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "f16c", "fma", "avx2")
# Calls reading at least this much weight are split with the helper thread (engine.py); between calls it polls for
# HELPER_SPIN_US (yielding its core to anything else runnable), then sleeps. Measured (docs/benchmarks.md): splitting
# every layer's matmuls with a polling helper takes a lone step of the engine alone from 21.2 to 17.6 ms, but spends
# the second core that the server's ingress and replica need (the server's CPU per token rose by half and one stream
# did not get faster); so by default only calls of 4 MiB or more (SmolLM2: its 30 MB LM head) wake a sleeping helper.
HELPER_MIN_BYTES = 4 * 2**20
HELPER_SPIN_US = 0
MAX_ROWS = SMALL_ROWS  # calls of at most this many rows take the kernel (it holds up to 8 rows' accumulators)
ROUND_TRIP_TOLERANCE = 1e-5  # as cpu_int4: a block round-trips when every weight comes back within this of its range
# The kernels' dtype codes (decode_matmul.h: F32, BF16), for activations, outputs, norms and caches
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}


class NativeWeight:
    """A [N, K] weight in the kernel's layout: `qs` uint8 codes, `d` (and for 4-bit `m`) fp16 [N, K / BLOCK]."""

    def __init__(self, bits: int, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, out_features: int,
                 in_features: int):
        self.bits, self.qs, self.d, self.m = bits, qs, d, m
        self.out_features, self.in_features = out_features, in_features

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qs, self.d, self.m) if t is not None)


class Kernels:
    """The built library: `matmul(weight, x [R, K], out [R, N])` for R <= MAX_ROWS, x and out float32 or bf16."""

    def __init__(self, lib: ctypes.CDLL, path: str):
        self.path = path
        p, i = ctypes.c_void_p, ctypes.c_int
        self._q4 = lib.os_q4_matmul
        self._q4.argtypes = [p, p, p, i, i, p, i, i, p, i, p]
        self._q4.restype = None
        self._q8 = lib.os_q8_matmul
        self._q8.argtypes = [p, p, i, i, p, i, i, p, i, p]
        self._q8.restype = None
        self._scratch_bytes = lib.os_scratch_bytes
        self._scratch_bytes.argtypes = [i, i]
        self._scratch_bytes.restype = ctypes.c_size_t
        self._set_helper = lib.os_set_helper
        self._set_helper.argtypes = [i]
        self._set_helper_min_bytes = lib.os_set_helper_min_bytes
        self._set_helper_min_bytes.argtypes = [ctypes.c_size_t]
        self._set_helper_min_bytes.restype = None
        self._set_step_helper_min_bytes = lib.os_set_step_helper_min_bytes
        self._set_step_helper_min_bytes.argtypes = [ctypes.c_size_t]
        self._set_step_helper_min_bytes.restype = None
        self._spin_us = HELPER_SPIN_US
        self.lib = lib  # native_step.py binds the whole-step entry points

    def scratch(self, in_features: int) -> torch.Tensor:
        """A buffer for one call's quantized activations (reused across calls of one thread)."""
        return torch.empty(int(self._scratch_bytes(MAX_ROWS, in_features)), dtype=torch.uint8)

    def use_helper_thread(self, min_weight_bytes: int, spin_us: int = HELPER_SPIN_US) -> bool:
        """Split calls that read at least `min_weight_bytes` of weights with one helper thread (0: never); between
        calls the helper polls for spin_us, then sleeps. False when the thread could not start."""
        if min_weight_bytes and self._set_helper(spin_us) != 0:
            return False
        self._spin_us = spin_us
        self._set_helper_min_bytes(min_weight_bytes)
        return True

    def use_step_helper(self, min_weight_bytes: int) -> bool:
        """Inside a whole native decode step (native_step.py), split calls that read at least `min_weight_bytes` of
        weights with the helper thread, which then polls from the step's start to its end instead of sleeping between
        calls (0: as outside a step). False when the thread could not start."""
        if min_weight_bytes and self._set_helper(self._spin_us) != 0:
            return False
        self._set_step_helper_min_bytes(min_weight_bytes)
        return True

    def matmul(self, weight: NativeWeight, x: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor) -> None:
        """out [R, N] = x [R, K] @ weight.T; both contiguous, same dtype (float32 or bf16), R <= MAX_ROWS."""
        rows, dtype = x.shape[0], DTYPE_CODES[x.dtype]
        if weight.bits == 4:
            self._q4(weight.qs.data_ptr(), weight.d.data_ptr(), weight.m.data_ptr(), weight.out_features,
                     weight.in_features, x.data_ptr(), dtype, rows, out.data_ptr(), dtype, scratch.data_ptr())
        else:
            self._q8(weight.qs.data_ptr(), weight.d.data_ptr(), weight.out_features, weight.in_features,
                     x.data_ptr(), dtype, rows, out.data_ptr(), dtype, scratch.data_ptr())


def cpu_supported() -> bool:
    """x86-64 Linux with every instruction set the kernel is compiled for."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return all(flag in flags for flag in CPU_FLAGS)


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.cache
def load_kernels(cache_dir: str | None = None) -> Kernels | None:
    """The kernels, built into `cache_dir`/native on first use (one file per source, flags and compiler), or None
    where this machine cannot build or run them (logged once)."""
    if os.environ.get("OPENSERVE_NATIVE_DECODE", "1") == "0":
        return None
    if not cpu_supported():
        log.info("native decode matmuls unavailable: this CPU lacks one of %s", ", ".join(CPU_FLAGS))
        return None
    compiler = _compiler()
    if compiler is None:
        log.info("native decode matmuls unavailable: no C compiler (gcc or cc, or $CC)")
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        source = b""
        for name in (*SOURCES, *HEADERS):
            with open(os.path.join(NATIVE_DIR, name), "rb") as f:
                source += name.encode() + b"\0" + f.read()
        key = hashlib.sha256(source + json.dumps([CFLAGS, version]).encode()).hexdigest()[:16]
        folder = os.path.join(os.path.expanduser(cache_dir or os.path.join("~", ".cache", "openserve")), "native")
        path = os.path.join(folder, f"decode_matmul-{key}.so")
        if not os.path.isfile(path):
            _build(compiler, folder, path)
        lib = ctypes.CDLL(path)
        if lib.os_abi_version() != ABI_VERSION:
            raise RuntimeError(f"{path}: ABI {lib.os_abi_version()}, expected {ABI_VERSION}")
        kernels = Kernels(lib, path)
        _self_check(kernels)

    except Exception as e:  # noqa: BLE001 - any failure leaves PyTorch's kernels in charge
        log.warning("native decode matmuls unavailable (%s); decoding on PyTorch's kernels", e)
        return None
    return kernels


def _build(compiler: str, folder: str, path: str) -> None:
    """Compile SOURCES to `path` atomically (a temporary file renamed: concurrent builders race harmlessly)."""
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".decode_matmul-", suffix=".so", dir=folder)
    os.close(fd)
    try:
        sources = [os.path.join(NATIVE_DIR, name) for name in SOURCES]
        done = subprocess.run([compiler, *CFLAGS, "-o", tmp, *sources, "-lm"], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _self_check(kernels: Kernels) -> None:
    """Both kernels against float64 on random blocks, 1 and 3 rows, float32 and bf16: a wrong build is refused."""
    gen = torch.Generator().manual_seed(0)
    n, k = 48, 128
    codes4 = torch.randint(0, 16, (n, k // BLOCK, BLOCK), generator=gen).float()
    codes4[..., 0], codes4[..., 1] = 0, 15
    d = (torch.rand(n, k // BLOCK, 1, generator=gen) * 0.02 + 1e-3).half().float()
    m = (-torch.rand(n, k // BLOCK, 1, generator=gen) * 0.1).half().float()
    codes8 = torch.randint(-127, 128, (n, k // BLOCK, BLOCK), generator=gen).float()
    codes8[..., 0] = 127
    for w in ((codes4 * d + m).reshape(n, k), (codes8 * d).reshape(n, k)):
        native = native_q4(w) or native_q8(w)
        if native is None:
            raise RuntimeError("self-check weights did not convert")
        for rows in (1, 3):
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(rows, k, generator=gen).to(dtype)
                out = torch.empty(rows, n, dtype=dtype)
                kernels.matmul(native, x, out, kernels.scratch(k))
                want = x.double() @ w.double().T
                error = float((out.double() - want).norm() / want.norm())
                if not error < 3e-2:
                    raise RuntimeError(f"self-check: relative error {error:.3g} ({native.bits}-bit, {dtype})")


def native_q4(weight: torch.Tensor) -> NativeWeight | None:
    """The [N, K] float32 weight as 4-bit blocks (w = d * q + m, q in 0..15, fp16 d and m) when it is exactly that
    (a GGUF Q4_0/Q4_1 dequantized), else None; also None when K is not a multiple of 2 * BLOCK."""
    if weight.dim() != 2 or weight.shape[1] % (2 * BLOCK) or weight.device.type != "cpu":
        return None
    w = weight.detach().float()
    n, k = w.shape
    blocks = w.reshape(n, k // BLOCK, BLOCK)  # [N, G, 32]
    low = blocks.amin(-1)  # [N, G]
    span = blocks.amax(-1) - low
    d = torch.where(span > 0, span / 15, torch.ones_like(span)).half()  # [N, G]
    m = low.half()
    if not (torch.isfinite(d).all() and torch.isfinite(m).all()):
        return None
    codes = ((blocks - m.float()[..., None]) / d.float()[..., None]).round()
    if codes.amin() < 0 or codes.amax() > 15:
        return None
    back = codes * d.float()[..., None] + m.float()[..., None]
    if ((back - blocks).abs() > ROUND_TRIP_TOLERANCE * span[..., None]).any():
        return None
    c = codes.to(torch.uint8)
    qs = (c[..., :16] | (c[..., 16:] << 4)).reshape(n, k // 2).contiguous()  # byte j: q[j] | q[j + 16] << 4
    return NativeWeight(4, qs, d.contiguous(), m.contiguous(), n, k)


def native_q8(weight: torch.Tensor) -> NativeWeight | None:
    """The [N, K] float32 weight as 8-bit blocks (w = d * q, q in -127..127, fp16 d) when it is exactly that (a GGUF
    Q8_0 dequantized), else None; also None when K is not a multiple of 2 * BLOCK."""
    if weight.dim() != 2 or weight.shape[1] % (2 * BLOCK) or weight.device.type != "cpu":
        return None
    w = weight.detach().float()
    n, k = w.shape
    blocks = w.reshape(n, k // BLOCK, BLOCK)  # [N, G, 32]
    amax = blocks.abs().amax(-1)  # [N, G]
    d = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).half()
    if not torch.isfinite(d).all():
        return None
    codes = (blocks / d.float()[..., None]).round()
    if codes.abs().amax() > 127:
        return None
    if ((codes * d.float()[..., None] - blocks).abs() > ROUND_TRIP_TOLERANCE * amax[..., None]).any():
        return None
    biased = (codes + 128).to(torch.uint8).reshape(n, k // (2 * BLOCK), 2, 2, 16)  # [N, pair, block, half, 16]
    qs = biased.transpose(2, 3).reshape(n, k).contiguous()  # per pair: [A0..15, B0..15, A16..31, B16..31]
    return NativeWeight(8, qs, d.contiguous(), None, n, k)


def capture_native(model: nn.Module) -> dict[str, NativeWeight]:
    """Native forms of the model's nn.Linear weights that are exactly 4- or 8-bit blocks, by module name (call it on
    float32 weights, before a cast to half precision rounds them)."""
    found = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module) is nn.Linear and module.bias is None:
                native = native_q4(module.weight)
                if native is None:
                    native = native_q8(module.weight)
                if native is not None:
                    found[name] = native
    return found


def cached_native(model: nn.Module, folder: str) -> dict[str, NativeWeight]:
    """capture_native(model) for a model loaded from `folder` (a GGUF conversion's): read from the folder's cache
    file when a load before wrote one, else captured and written there (best effort)."""
    path = os.path.join(folder, f"native-v{WEIGHTS_VERSION}.safetensors")
    return weight_cache.cached(path, lambda: capture_native(model), _write, _read, "native weight")


def _write(path: str, found: dict[str, NativeWeight]) -> None:
    tensors, shapes = {}, {}
    for name, w in found.items():
        tensors[f"{name}.qs"], tensors[f"{name}.d"] = w.qs, w.d
        if w.m is not None:
            tensors[f"{name}.m"] = w.m
        shapes[name] = [w.bits, w.out_features, w.in_features]
    weight_cache.save(path, tensors, shapes)


def _read(path: str) -> dict[str, NativeWeight]:
    shapes, tensors = weight_cache.load(path)
    return {name: NativeWeight(bits, tensors[f"{name}.qs"], tensors[f"{name}.d"], tensors.get(f"{name}.m"), n, k)
            for name, (bits, n, k) in shapes.items()}


class NativeDecodeLinear(nn.Module):
    """A linear layer that runs calls of at most MAX_ROWS rows on the native kernel and larger ones on `large` (the
    layer as it was: nn.Linear or cpu_linear.PackedLinear)."""

    def __init__(self, large: nn.Module, weight: NativeWeight, kernels: Kernels):
        super().__init__()
        self.large = large
        self.weight = weight
        self.kernels = kernels
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.scratch = kernels.scratch(weight.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > MAX_ROWS or x.dtype not in DTYPE_CODES:
            return self.large(x)
        flat = x.reshape(rows, self.in_features).contiguous()  # [R, K]
        out = torch.empty(rows, self.out_features, dtype=x.dtype)  # [R, N]
        self.kernels.matmul(self.weight, flat, out, self.scratch)
        return out.reshape(*x.shape[:-1], self.out_features)


def attach_native(model: nn.Module, captured: dict[str, NativeWeight], kernels: Kernels | None) -> int:
    """Wrap each captured layer (by name; packed or not) in NativeDecodeLinear; return how many. Nothing is wrapped
    when the first layer's native output disagrees with its own path (to bf16 precision) on a self-check."""
    if not captured or kernels is None:
        return 0
    modules = dict(model.named_modules())
    targets = []
    for name, weight in captured.items():
        layer = modules.get(name)
        if layer is None or getattr(layer, "in_features", None) != weight.in_features:
            continue
        parent_name, _, child = name.rpartition(".")
        targets.append((modules[parent_name] if parent_name else model, child,
                        NativeDecodeLinear(layer, weight, kernels)))
    if not targets or not _agrees(targets[0][2]):
        return 0
    for parent, child, wrapped in targets:
        setattr(parent, child, wrapped)
    return len(targets)


class FusedNative:
    """Layers that read the same input (q/k/v, gate/up) as one kernel call: their weights concatenated by rows, the
    layers' own weights turned into views of that concatenation (nothing stored twice). `fused(x)` gives each layer's
    output as a column slice of one [R, sum N] result, bit for bit what the layers give alone (every output row of the
    kernel is computed the same whatever rows surround it); calls of at most MAX_ROWS rows only."""

    def __init__(self, layers: list[NativeDecodeLinear]):
        weights = [layer.weight for layer in layers]
        first = weights[0]
        qs = torch.cat([w.qs for w in weights])
        d = torch.cat([w.d for w in weights])
        m = torch.cat([w.m for w in weights]) if first.bits == 4 else None
        self.spans, start = [], 0
        for w in weights:
            end = start + w.out_features
            w.qs, w.d = qs[start:end], d[start:end]  # the layer keeps working, on views of the fused storage
            if m is not None:
                w.m = m[start:end]
            self.spans.append((start, end))
            start = end
        self.weight = NativeWeight(first.bits, qs, d, m, start, first.in_features)
        self.kernels = layers[0].kernels
        self.in_features = first.in_features
        self.scratch = self.kernels.scratch(first.in_features)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        rows = x.numel() // self.in_features
        flat = x.reshape(rows, self.in_features).contiguous()  # [R, K]
        out = torch.empty(rows, self.weight.out_features, dtype=x.dtype)  # [R, sum N]
        self.kernels.matmul(self.weight, flat, out, self.scratch)
        return [out[:, start:end] for start, end in self.spans]  # [R, N_i] each


def fuse(*layers: nn.Module) -> FusedNative | None:
    """A FusedNative over `layers` when they are all NativeDecodeLinear of one kind (bits, input size, kernels)."""
    if not layers or not all(isinstance(layer, NativeDecodeLinear) for layer in layers):
        return None
    kinds = {(layer.weight.bits, layer.in_features, id(layer.kernels)) for layer in layers}
    return FusedNative(list(layers)) if len(kinds) == 1 else None


class NativeEmbedding(nn.Module):
    """The input embedding read from an 8-bit LM head's native weight (a tied Q8_0 embedding): rows gathered and
    widened on lookup, so the model need not keep a bf16 copy of the table (SmolLM2: 56 MB)."""

    def __init__(self, weight: NativeWeight, dtype: torch.dtype):
        super().__init__()
        self.weight_q8, self.dtype = weight, dtype
        self.num_embeddings, self.embedding_dim = weight.out_features, weight.in_features
        k = weight.in_features  # stored per pair of blocks as [A0..15, B0..15, A16..31, B16..31]: undo that
        self.order = torch.arange(k).reshape(k // 64, 2, 2, 16).transpose(1, 2).reshape(k).argsort()  # [K]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        codes = self.weight_q8.qs[flat][:, self.order].to(torch.int16) - 128  # [T, K]
        scales = self.weight_q8.d[flat].float().repeat_interleave(BLOCK, dim=1)  # [T, K]
        return (codes.float() * scales).to(self.dtype).reshape(*ids.shape, self.embedding_dim)


def share_embedding(model: nn.Module) -> bool:
    """Replace the model's input embedding by a NativeEmbedding over its native 8-bit LM head when the two are
    the same table and the lookup gives the embedding's values bit for bit; True if replaced (its copy is freed)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if not isinstance(head, NativeDecodeLinear) or head.weight.bits != 8 or type(embed) is not nn.Embedding:
        return False
    table = embed.weight
    if tuple(table.shape) != (head.out_features, head.in_features) or table.dtype not in (torch.bfloat16,
                                                                                            torch.float16):
        return False
    shared = NativeEmbedding(head.weight, table.dtype)
    with torch.inference_mode():
        for start in range(0, table.shape[0], 8192):  # the whole table, in slices (memory)
            ids = torch.arange(start, min(start + 8192, table.shape[0]))
            if not torch.equal(shared(ids), table[ids]):
                return False
    model.set_input_embeddings(shared)
    return True


def _agrees(layer: NativeDecodeLinear) -> bool:
    """The native path gives the layer's own outputs to bf16 precision on one row (in the layer's dtype)."""
    dtype = activation_dtype(layer.large)
    if dtype not in DTYPE_CODES:
        return False
    with torch.inference_mode():
        x = torch.randn(1, 1, layer.in_features, generator=torch.Generator().manual_seed(0)).to(dtype)
        want = layer.large(x).float()
        got = layer(x).float()
    if not torch.allclose(got, want, rtol=3e-2, atol=3e-2 * float(want.abs().max())):
        log.warning("native decode matmul disagrees with the layer; decoding on the model's own weights")
        return False
    return True
