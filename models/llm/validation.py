"""Request checks shared by every LLMEngine (real and fake), so both refuse the same inputs the same way."""
from __future__ import annotations

from models.errors import ModelInputError
from models.llm.types import SamplingParams

MAX_TOP_LOGPROBS = 20


def validate_request(
    prompt_token_ids: list[int], params: SamplingParams, max_model_len: int, vocab_size: int | None = None
) -> int:
    """Raise ModelInputError for a request that can never run; return its output budget (max new tokens)."""
    if not prompt_token_ids:
        raise ModelInputError("The prompt is empty.", param="messages")
    if vocab_size is not None and any(not 0 <= t < vocab_size for t in prompt_token_ids):
        raise ModelInputError(f"Prompt token ids must be in [0, {vocab_size}).", param="messages")
    validate_params(params)
    n = len(prompt_token_ids)
    if n >= max_model_len:
        raise ModelInputError(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has {n} tokens "
            "and no room is left for the completion.",
            param="messages",
        )
    if params.max_tokens is None:
        return max_model_len - n
    if n + params.max_tokens > max_model_len:
        raise ModelInputError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{n + params.max_tokens} tokens ({n} in the prompt, {params.max_tokens} in the completion).",
            param="max_tokens",
        )
    return params.max_tokens


def validate_params(p: SamplingParams) -> None:
    """Raise ModelInputError(param=<field>) for a sampling field out of its range."""
    checks = [
        ("max_tokens", p.max_tokens is None or p.max_tokens >= 1, "must be at least 1"),
        ("temperature", p.temperature >= 0.0, "must be >= 0"),
        ("top_p", 0.0 < p.top_p <= 1.0, "must be in (0, 1]"),
        ("top_k", p.top_k == -1 or p.top_k >= 1, "must be -1 (disabled) or >= 1"),
        ("top_logprobs", 0 <= p.top_logprobs <= MAX_TOP_LOGPROBS, f"must be in [0, {MAX_TOP_LOGPROBS}]"),
        ("presence_penalty", -2.0 <= p.presence_penalty <= 2.0, "must be in [-2, 2]"),
        ("frequency_penalty", -2.0 <= p.frequency_penalty <= 2.0, "must be in [-2, 2]"),
    ]
    for name, ok, rule in checks:
        if not ok:
            raise ModelInputError(f"{name} {rule}, got {getattr(p, name)!r}.", param=name)
