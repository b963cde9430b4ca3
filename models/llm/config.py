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


@dataclass(frozen=True)
class EngineConfig:
    """How an HFEngine runs. Every field is an option a model's config may set (configs/*.yaml `options:`)."""

    # Prompt + output tokens per request. None: the model's own max_position_embeddings, capped at 8192, since
    # every KV slot reserves max_model_len tokens and 128k-token slots would rarely fit.
    max_model_len: int | None = None
    # Sequences decoded together, one KV slot each; fewer run when kv_cache_gb cannot hold that many slots.
    max_running: int = 16
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
    # KV cache budget in GiB. None: 80% of the free GPU memory on CUDA, half the physical memory on CPU.
    kv_cache_gb: float | None = None
    # On CPU, pre-pack bf16/fp16 linear weights for oneDNN once instead of re-laying them out on every call.
    cpu_packed_linear: bool = True
    # On CPU, for a GGUF whose weights are exactly 4-bit (Q4_0/Q4_1), decode small batches on those int4 weights:
    # a decode step of a few sequences is bound by the bytes of weights read.
    cpu_int4_decode: bool = True
    # Decode-only steps (where no CUDA graph replays them) through the lean decode function of lean_decode.py, for
    # the architectures it knows and when it passes its load-time probe: no transformers module plumbing per step.
    lean_decode: bool = True

    def __post_init__(self) -> None:
        _require(self.max_model_len is None or self.max_model_len >= 2, "max_model_len", "must be >= 2",
                 self.max_model_len)
        _require(self.max_running >= 1, "max_running", "must be >= 1", self.max_running)
        _require(self.max_queued >= 0, "max_queued", "must be >= 0", self.max_queued)
        _require(self.max_batched_tokens is None or self.max_batched_tokens >= 1, "max_batched_tokens",
                 "must be >= 1", self.max_batched_tokens)
        _require(self.kv_cache_gb is None or self.kv_cache_gb > 0, "kv_cache_gb", "must be > 0", self.kv_cache_gb)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "EngineConfig":
        """The config a model's `options` ask for; ValueError("options.<key>: ...") naming an unknown or bad key."""
        return options_to_config(cls, options)
