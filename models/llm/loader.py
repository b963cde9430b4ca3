"""Load a causal LM and its tokenizer from a local folder, a Hugging Face repo id, or a GGUF file (cached), and read
what the engine needs from them (eos ids, the LM head's vocabulary, the context length).

GGUF files are dequantized by transformers on every load, so the first load converts the GGUF into a safetensors
folder under `cache_dir` (SmolLM2-135M: ~12 CPU-s, parsing the file once; ~27 as transformers does it alone, see
`_gguf_parsed_once`), keyed by the file's name, size and content hash, and later loads read that folder (~2 s). The
folder is written to a temporary name and renamed into place, so a crash mid-write never leaves a half cache behind.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from models.llm.cpu_int4 import Int4Weight, cached_lossless_int4, int4_supported
from models.llm.cpu_native import NativeWeight, cached_native, load_kernels

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "openserve", "gguf")  # expanded at call time
DEFAULT_MAX_MODEL_LEN = 8192  # when the options do not say (see resolve_max_model_len)


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """"auto" means bfloat16 on CUDA; on CPU bfloat16 where the CPU multiplies bf16 natively and the engine can
    pre-pack bf16 weights (see cpu_linear.py: 2.5x the fp32 decode throughput at 16 sequences here), else float32.
    Otherwise one of DTYPES."""
    if dtype == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def cpu_has_fast_bf16() -> bool:
    """AMX-BF16 or AVX512-BF16 in the CPU flags (Linux), and PyTorch's oneDNN linear-packing ops present."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    return native and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def load_causal_lm(
    location: str,
    gguf_file: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    cache_dir: str | None = None,
) -> tuple[Any, Any]:
    """Return (model in eval mode on `device`, tokenizer) from a folder or repo id, or from a GGUF inside it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = location
    if gguf_file is not None:
        source = converted_gguf_dir(location, gguf_file, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    # Straight onto the device (device_map): loading on the CPU first and moving it takes the model's size in RAM
    # (16 GB for an 8B model in bf16) and a second copy's time.
    model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype, device), device_map=str(device))
    model.eval()
    return model, tokenizer


def converted_gguf_dir(location: str, gguf_file: str, cache_dir: str | None = None) -> str:
    """Path of the safetensors conversion of `location`/`gguf_file`, converting it first if not cached yet."""
    gguf_path = _local_gguf_path(location, gguf_file)
    root = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
    target = os.path.join(root, gguf_cache_key(gguf_path))
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".converting-", dir=root)
    try:
        convert_gguf(os.path.dirname(gguf_path), os.path.basename(gguf_path), tmp)
        try:
            os.rename(tmp, target)  # atomic on one filesystem
        except OSError:
            if not os.path.isfile(os.path.join(target, "config.json")):  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return target


def gguf_cache_key(gguf_path: str) -> str:
    """Folder name for a GGUF conversion: its name, size and content hash. A file replaced by other bytes gets a new
    conversion; the same bytes installed again (a fresh venv gives the packaged file a new mtime) reuse the old one
    instead of leaving a stale ~0.5 GB copy per install. Hashing 100 MB costs ~0.1 CPU-s per start."""
    stem = os.path.basename(gguf_path)
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    with open(gguf_path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    return f"{stem}-{os.path.getsize(gguf_path)}-{digest}"


def convert_gguf(folder: str, gguf_file: str, out_dir: str) -> None:
    """Dequantize `folder`/`gguf_file` to float32 and save model + tokenizer as safetensors into `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        # save_pretrained refuses a model "quantized with gguf"; its weights are already plain float32 tensors.
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, each GGUF file is parsed once and each gguf tensor-name map built once. transformers (5.x)
    parses the file for the tokenizer, the config and the weights (GGUFReader reads every metadata string: the
    vocabulary and merges), and builds gguf's name map anew for every module of the model; both read-only uses.
    transformers imports these names from `gguf` when it calls them, so the package's attributes are what it gets."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=4)(reader)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=16)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _local_gguf_path(location: str, gguf_file: str) -> str:
    """The GGUF file on disk: inside a local folder, or fetched from the Hub (its own cache) for a repo id."""
    if os.path.isdir(location):
        path = os.path.join(location, gguf_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file {gguf_file!r} not found in {location!r}")
        return path
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=location, filename=gguf_file)


def load_with_int4_weights(location: str, gguf_file: str | None = None, dtype: str = "auto", device: str = "cpu",
                           cache_dir: str | None = None, int4: bool = True,
                           native: bool = True) -> tuple[Any, Any, dict[str, Int4Weight | NativeWeight]]:
    """(model cast to `dtype`, tokenizer, decode weights) with `load_causal_lm`. For a GGUF on CPU (its conversion is
    float32) and `int4`, the linear weights that are exactly 4-bit (cpu_int4.py) are found before the cast, once per
    conversion: later loads read them from the conversion's folder. With `native`, a bf16 model and kernels that
    build here (cpu_native.py), the weights that are exactly 4- or 8-bit blocks are taken in the native kernels'
    form instead (the LM head of a Q8_0 embedding included)."""
    target = resolve_dtype(dtype, device)
    int4 = int4 and gguf_file is not None and str(device) == "cpu"
    kernels = load_kernels(cache_dir) if int4 and native and target == torch.bfloat16 else None
    int4 = int4 and (kernels is not None or int4_supported())
    if gguf_file is not None:  # the conversion's folder: the int4 cache lives beside its weights
        location, gguf_file = converted_gguf_dir(location, gguf_file, cache_dir), None
    model, tokenizer = load_causal_lm(location, dtype="float32" if int4 else dtype, device=device)
    weights: dict[str, Int4Weight | NativeWeight] = {}
    if int4:
        weights = cached_native(model, location) if kernels is not None else cached_lossless_int4(model, location)
    if model.dtype != target:
        model.to(target)
    return model, tokenizer, weights


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids: the tokenizer's eos plus the generation config's (an int or a list)."""
    ids: set[int] = set()
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        candidates.append(generation_config.eos_token_id)
    for c in candidates:
        if isinstance(c, int):
            ids.add(c)
        elif c is not None:
            ids.update(int(x) for x in c)
    return ids


def vocab_size_of(model: Any) -> int:
    """Rows of the LM head (may exceed len(tokenizer) when padded); the config's vocab_size otherwise."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)


def resolve_max_model_len(config: Any, requested: int | None) -> int:
    """`requested` capped by the model's max_position_embeddings; without a request, the model's own length up to
    DEFAULT_MAX_MODEL_LEN (every KV slot reserves max_model_len tokens: 128k-token slots would rarely fit)."""
    native = getattr(config, "max_position_embeddings", None)
    if native is None and requested is None:
        raise ValueError("max_model_len is required: the model config has no max_position_embeddings")
    if native is None:
        return int(requested)
    if requested is None:
        if native > DEFAULT_MAX_MODEL_LEN:
            log.info("max_model_len defaults to %d (the model allows %d; set max_model_len to raise it)",
                     DEFAULT_MAX_MODEL_LEN, native)
        return min(int(native), DEFAULT_MAX_MODEL_LEN)
    return min(int(native), int(requested))
