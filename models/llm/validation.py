"""Request checks shared by every LLMEngine (real and fake), so both refuse the same inputs the same way.

Whatever passes here must never raise inside `step()`: every per-request value the sampler, the stop rules or the
detokenizer read is checked for type and range, since an exception in a step stops the engine for every request.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from models.errors import ModelInputError
from models.llm.types import SamplingParams

MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for a logit_bias value: -100..100
# Seeds: any 64-bit value read as signed or unsigned (vLLM's API takes signed int64, a subset).
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1


def validate_request(
    prompt_token_ids: list[int], params: SamplingParams, max_model_len: int, vocab_size: int | None = None
) -> int:
    """Raise ModelInputError for a request that can never run; return its output budget (max new tokens)."""
    if not prompt_token_ids:
        raise ModelInputError("The prompt is empty.", param="messages")
    if vocab_size is not None and any(not 0 <= t < vocab_size for t in prompt_token_ids):
        raise ModelInputError(f"Prompt token ids must be in [0, {vocab_size}).", param="messages")
    validate_params(params, vocab_size)
    n = len(prompt_token_ids)
    if n >= max_model_len:
        raise ModelInputError(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has {n} tokens "
            "and no room is left for the completion.",
            param="messages",
        )
    if params.max_tokens is not None and n + params.max_tokens > max_model_len:
        raise ModelInputError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{n + params.max_tokens} tokens ({n} in the prompt, {params.max_tokens} in the completion).",
            param="max_tokens",
        )
    return output_budget(n, params.max_tokens, max_model_len)


def output_budget(prompt_len: int, max_tokens: int | None, max_model_len: int) -> int:
    """Max new tokens of a request: `max_tokens`, or what the context leaves after the prompt, whichever is less."""
    room = max_model_len - prompt_len
    return room if max_tokens is None else min(max_tokens, room)


def validate_params(p: SamplingParams, vocab_size: int | None = None) -> None:
    """Raise ModelInputError(param=<field>) for a sampling field of the wrong type or out of its range."""
    checks = [
        ("max_tokens", p.max_tokens is None or (_is_int(p.max_tokens) and p.max_tokens >= 1), "must be at least 1"),
        ("temperature", _is_number(p.temperature) and p.temperature >= 0.0, "must be a finite number >= 0"),
        ("top_p", _is_number(p.top_p) and 0.0 < p.top_p <= 1.0, "must be in (0, 1]"),
        ("top_k", _is_int(p.top_k) and (p.top_k == -1 or p.top_k >= 1), "must be -1 (disabled) or >= 1"),
        ("seed", p.seed is None or (_is_int(p.seed) and MIN_SEED <= p.seed <= MAX_SEED),
         f"must be an integer in [{MIN_SEED}, {MAX_SEED}]"),
        ("logprobs", isinstance(p.logprobs, bool), "must be true or false"),
        ("top_logprobs", _is_int(p.top_logprobs) and 0 <= p.top_logprobs <= MAX_TOP_LOGPROBS,
         f"must be in [0, {MAX_TOP_LOGPROBS}]"),
        ("presence_penalty", _is_number(p.presence_penalty) and -2.0 <= p.presence_penalty <= 2.0,
         "must be in [-2, 2]"),
        ("frequency_penalty", _is_number(p.frequency_penalty) and -2.0 <= p.frequency_penalty <= 2.0,
         "must be in [-2, 2]"),
        ("ignore_eos", isinstance(p.ignore_eos, bool), "must be true or false"),
        ("stop", isinstance(p.stop, (list, tuple)) and all(isinstance(s, str) for s in p.stop),
         "must be a list of strings"),
        ("stop_token_ids", isinstance(p.stop_token_ids, (list, tuple)) and all(_is_int(t) for t in p.stop_token_ids),
         "must be a list of integers"),
    ]
    for name, ok, rule in checks:
        if not ok:
            raise ModelInputError(f"{name} {rule}, got {getattr(p, name)!r}.", param=name)
    _validate_logit_bias(p.logit_bias, vocab_size)


def _validate_logit_bias(bias: Any, vocab_size: int | None) -> None:
    if not isinstance(bias, dict):
        raise ModelInputError(f"logit_bias must map token ids to numbers, got {bias!r}.", param="logit_bias")
    for token, value in bias.items():
        if not _is_int(token) or token < 0 or (vocab_size is not None and token >= vocab_size):
            limit = f"[0, {vocab_size})" if vocab_size is not None else "non-negative integers"
            raise ModelInputError(f"logit_bias keys must be token ids in {limit}, got {token!r}.", param="logit_bias")
        if not _is_number(value) or not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise ModelInputError(f"logit_bias values must be in [-100, 100], got {value!r} for token {token}.",
                                  param="logit_bias")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
