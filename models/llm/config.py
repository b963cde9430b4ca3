"""Typed engine options: a model's `options` dict becomes a frozen dataclass, or a ValueError naming the bad key.

`EngineConfig.from_options(options)` is the check the serving layer runs when a model is registered, so a typo
(`max_runing`) or a wrong type (`max_running: "16"`) is refused there with the key's name, not when a replica
starts. Pure Python: no torch, so validating a registration stays cheap.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

T = TypeVar("T")

# How a chat model's `auto` tool calls are read from its text (serving/tools/parsers.py): a model option that the
# serving side uses (options.tool_parser), not the engine, so chat_engine_options() takes it out.
TOOL_PARSERS = ("hermes", "json")


def chat_engine_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A chat model's options without the serving-side ones (tool_parser), which are checked here."""
    options = dict(options or {})
    parser = options.pop("tool_parser", TOOL_PARSERS[0])
    if parser not in TOOL_PARSERS:
        raise ValueError(f"options.tool_parser: expected one of {', '.join(TOOL_PARSERS)}, got {parser!r}")
    return options


def options_to_config(cls: type[T], options: Mapping[str, Any] | None) -> T:
    """Build the dataclass `cls` from `options`; ValueError("options.<key>: ...") for an unknown key or a value of
    the wrong type (int fields take ints, float fields ints or finite floats, bool fields only booleans)."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ValueError(f"options: expected a mapping of option names to values, got {type(options).__name__}")
    hints = typing.get_type_hints(cls)
    known = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    for key, value in options.items():
        if key not in known:
            raise ValueError(f"options.{key}: unknown option; known: {', '.join(known)}")
        _check_type(key, value, hints[key])
    return cls(**options)


def _check_type(key: str, value: Any, hint: Any) -> None:
    """Raise ValueError unless `value` fits `hint` (int, float, bool, str, or one of those | None)."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return
        if kind is str and isinstance(value, str):
            return
    names = " or ".join("null" if k is type(None) else _TYPE_NAMES.get(k, getattr(k, "__name__", str(k)))
                        for k in allowed)
    raise ValueError(f"options.{key}: expected {names}, got {value!r} ({type(value).__name__})")


_UnionType = type(int | None)
_TYPE_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"options.{key}: {rule}, got {value!r}")


DEFAULT_MAX_RUNNING = {"cpu": 16, "cuda": 256}  # see EngineConfig.max_running


@dataclass(frozen=True)
class EngineConfig:
    """How an HFEngine runs. Every field is an option a model's config may set (configs/*.yaml `options:`)."""

    # Prompt + output tokens per request. None: the model's own max_position_embeddings, capped at 8192, since
    # every KV slot reserves max_model_len tokens and 128k-token slots would rarely fit.
    max_model_len: int | None = None
    # Sequences decoded together, one KV slot each; fewer run when kv_cache_gb cannot hold that many slots.
    # None: DEFAULT_MAX_RUNNING for the device (16 on CPU, where a step's time grows with its rows; 256 on CUDA,
    # where a decode step costs about the same at 1 and 256 rows and 16 would cap a 256-stream run at 16 wide).
    max_running: int | None = None
    # Requests waiting for a slot; past it add_request raises EngineOverloadedError (the server answers 429).
    max_queued: int = 256
    # Tokens fed per step (decodes + prefill chunks). None: 512 on CPU, where a step's time grows with its tokens
    # and smaller chunks of a long prompt keep the running decodes flowing; 4096 on CUDA.
    max_batched_tokens: int | None = None
    # False forces the per-request fallback runner (one forward per request per step) even when the batched
    # slot-attention runner would pass its load-time probe.
    batched: bool = True
    # Replay decode-only steps as CUDA graphs (CUDA only): one launch instead of thousands per step.
    cuda_graphs: bool = True
    # KV cache budget in GiB. None: on CUDA what gpu_memory_share leaves after the weights and a reserve for
    # activations (gpu_memory.py); on CPU half the physical memory.
    kv_cache_gb: float | None = None
    # The fraction of the GPU this replica may use (Serve's num_gpus), enforced with the per-process memory
    # fraction so that tenants sharing a device never exceed it together. 0.9 leaves room for other processes.
    gpu_memory_share: float = 0.9
    # On CPU, pre-pack bf16/fp16 linear weights for oneDNN once instead of re-laying them out on every call.
    cpu_packed_linear: bool = True
    # On CPU, for a GGUF whose weights are exactly 4-bit (Q4_0/Q4_1), decode small batches on those int4 weights:
    # a decode step of a few sequences is bound by the bytes of weights read.
    cpu_int4_decode: bool = True
    # With cpu_int4_decode, for a bf16 model: decode small batches on the native kernels of cpu_native.py (the
    # GGUF's 4- and 8-bit blocks, AVX-512 VNNI, built with the system's C compiler on first use) instead of
    # PyTorch's int4 kernel; the LM head too when it is 8-bit. Falls back to PyTorch's kernel where they cannot run.
    cpu_native_decode: bool = True
    # Split each native decode matmul of at least 4 MiB of weights (SmolLM2: the LM head) between the calling thread
    # and one helper thread, on a machine with more than one core: one core streams weights at ~6-12 GB/s.
    cpu_native_helper: bool = True
    # With the native kernels on every decode weight of a Llama-family model: a decode step of at most 8 rows as one
    # native call (native_step.py: the layers' small ops and attention in C too) instead of the lean decode loop.
    cpu_native_step: bool = True
    # Reuse the KV of prompt prefixes computed before (system prompts, earlier turns): full blocks of
    # kv_block_size tokens keyed by their tokens, kept in prefix_cache_gb, least recently used evicted first.
    # Off by default: only KV computed on a fresh prefill's path is cached (not int4 decode steps': prefix_cache.py),
    # but bf16 linear rows on CPU depend on the step's row count, so the tokens left after a hit compute logits a few
    # bf16 ulps off the uncached ones, enough to flip a greedy near-tie of SmolLM2 (docs/engine.md).
    prefix_caching: bool = False
    # Tokens per KV block (vLLM's default: 16). Smaller blocks match more of a prefix; each costs a hash.
    kv_block_size: int = 16
    # Memory for cached prefix blocks in GiB. On CPU it is committed as blocks are first written.
    prefix_cache_gb: float = 0.5
    # Make every fallback from the fast path an error at load instead of a logged warning: the batched runner's
    # probe failing (per-request runner) and a CUDA graph capture failing (eager decode).
    strict: bool = False
    # Decode-only steps (where no CUDA graph replays them) through the lean decode function of lean_decode.py, for
    # the architectures it knows and when it passes its load-time probe: no transformers module plumbing per step.
    lean_decode: bool = True
    # On CPU, lean decode steps of at most 8 rows with the small ops of each layer compiled by torch.compile
    # (compiled_decode.py): compiled in a background thread while the eager lean path serves, cached on disk. Off by
    # default: 5% less CPU a lone step, for a first-start compile of about a CPU-minute and 45 MB (engine.md).
    compiled_decode: bool = False

    def __post_init__(self) -> None:
        _require(self.max_model_len is None or self.max_model_len >= 2, "max_model_len", "must be >= 2",
                 self.max_model_len)
        _require(self.max_running is None or self.max_running >= 1, "max_running", "must be >= 1", self.max_running)
        _require(self.max_queued >= 0, "max_queued", "must be >= 0", self.max_queued)
        _require(self.max_batched_tokens is None or self.max_batched_tokens >= 1, "max_batched_tokens",
                 "must be >= 1", self.max_batched_tokens)
        _require(self.kv_cache_gb is None or self.kv_cache_gb > 0, "kv_cache_gb", "must be > 0", self.kv_cache_gb)
        _require(0 < self.gpu_memory_share <= 1, "gpu_memory_share", "must be in (0, 1]", self.gpu_memory_share)
        _require(1 <= self.kv_block_size <= 1024, "kv_block_size", "must be in 1..1024", self.kv_block_size)
        _require(self.prefix_cache_gb > 0, "prefix_cache_gb", "must be > 0", self.prefix_cache_gb)

    def running_on(self, device_type: str) -> int:
        """max_running, or the default for `device_type` ("cpu", "cuda") when the options leave it unset."""
        return self.max_running or DEFAULT_MAX_RUNNING.get(device_type, DEFAULT_MAX_RUNNING["cpu"])

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "EngineConfig":
        """The config a model's `options` ask for; ValueError("options.<key>: ...") naming an unknown or bad key."""
        return options_to_config(cls, options)
