"""HFEngine: a simple, correct LLMEngine on a transformers causal LM. One forward pass per request per step.

Each request keeps its own KV cache (the DynamicCache the model returns), so no padding and no masks: every
request's tokens are exactly those `model.generate` would produce for it alone. `step()` admits waiting requests
(up to `max_running`), prefills the new ones, decodes one token for the others, samples all rows together and
post-processes each through its `Sequence`. A continuous-batching engine can replace the inside of `step()`
without changing this interface.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from models.llm.sampler import RequestSampler, SampledToken, sample_next
from models.llm.sequence import Sequence
from models.llm.types import RequestOutput, SamplingParams, TokenLogprob
from models.llm.validation import validate_request


@dataclass
class _Request:
    """Engine-side state of one request: output bookkeeping, sampler, and the model's KV cache."""

    seq: Sequence
    sampler: RequestSampler
    cache: Any = None  # past_key_values after prefill; None while waiting
    last_token: int | None = None  # sampled but not yet fed to the model


class HFEngine:
    """LLMEngine over a transformers causal LM (see models.llm.types.LLMEngine for the contract)."""

    def __init__(self, model: Any, tokenizer: Any, max_model_len: int | None = None, max_running: int = 16):
        if max_running < 1:
            raise ValueError("max_running must be >= 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_running = max_running
        self.max_model_len = _resolve_max_model_len(model.config, max_model_len)
        self.vocab_size = _vocab_size(model)
        self.device = next(model.parameters()).device
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        forward_params = inspect.signature(model.forward).parameters
        self._keep_last_logits = "logits_to_keep" in forward_params
        # Newer transformers (5.24) call it `cache` and warn on `past_key_values`; older ones know only the latter.
        self._cache_name = "cache" if "cache" in forward_params else "past_key_values"
        self._waiting: OrderedDict[str, _Request] = OrderedDict()
        self._running: OrderedDict[str, _Request] = OrderedDict()

    @classmethod
    def load(
        cls,
        location: str,
        gguf_file: str | None = None,
        dtype: str = "auto",
        device: str = "cpu",
        cache_dir: str | None = None,
        max_model_len: int | None = None,
        max_running: int = 16,
    ) -> "HFEngine":
        """Load the model and tokenizer with `load_causal_lm` and wrap them in an engine."""
        from models.llm.loader import load_causal_lm

        model, tokenizer = load_causal_lm(
            location, gguf_file=gguf_file, dtype=dtype, device=device, cache_dir=cache_dir
        )
        return cls(model, tokenizer, max_model_len=max_model_len, max_running=max_running)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Queue a request; ModelInputError if it can never fit or its params are out of range."""
        if request_id in self._waiting or request_id in self._running:
            raise ValueError(f"duplicate request id {request_id!r}")
        prompt = [int(t) for t in prompt_token_ids]
        budget = validate_request(prompt, params, self.max_model_len, self.vocab_size)
        seq = Sequence(request_id, prompt, params, self.tokenizer, self.eos_token_ids, budget)
        self._waiting[request_id] = _Request(seq, RequestSampler(params, self.vocab_size, self.device))

    def step(self) -> list[RequestOutput]:
        """Prefill newly admitted requests, decode one token for the running ones; return one delta each."""
        self._admit()
        requests = list(self._running.values())
        if not requests:
            return []
        with torch.inference_mode():
            logits = torch.cat([self._forward(r) for r in requests])  # [B, V]
            sampled = sample_next(logits, [r.sampler for r in requests])
        return [self._emit(r, s) for r, s in zip(requests, sampled)]

    def abort(self, request_id: str) -> None:
        """Drop a request (waiting or running) and its KV cache now; unknown ids are ignored."""
        self._waiting.pop(request_id, None)
        self._running.pop(request_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self._waiting or self._running)

    def num_unfinished_requests(self) -> int:
        return len(self._waiting) + len(self._running)

    def unfinished_request_ids(self) -> list[str]:
        return [*self._running, *self._waiting]

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.max_running:
            request_id, request = self._waiting.popitem(last=False)
            self._running[request_id] = request

    def _forward(self, request: _Request) -> torch.Tensor:
        """Run the prompt (first time) or the last sampled token through the model; return logits [1, V]."""
        if request.cache is None:
            ids = request.seq.prompt_token_ids  # prefill: [T]
        else:
            ids = [request.last_token]  # decode: [1]
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, T]
        kwargs = {self._cache_name: request.cache, "use_cache": True}
        if self._keep_last_logits:
            kwargs["logits_to_keep"] = 1  # prefill: skip the [T, V] logits of all but the last position
        out = self.model(input_ids=input_ids, **kwargs)
        request.cache = out[self._cache_name]
        return out.logits[:, -1, :]  # [1, V]

    def _emit(self, request: _Request, sampled: SampledToken) -> RequestOutput:
        request.last_token = sampled.token_id
        output = request.seq.append(sampled.token_id, self._token_logprob(sampled))
        if output.finished:
            self._running.pop(output.request_id, None)  # frees the KV cache
        return output

    def _token_logprob(self, sampled: SampledToken) -> TokenLogprob | None:
        if sampled.logprob is None:
            return None
        top = [(t, self._token_text(t), lp) for t, lp in sampled.top]
        return TokenLogprob(sampled.token_id, self._token_text(sampled.token_id), sampled.logprob, top)

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


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


def _vocab_size(model: Any) -> int:
    """Rows of the LM head (may exceed len(tokenizer) when padded); the config's vocab_size otherwise."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


def _resolve_max_model_len(config: Any, requested: int | None) -> int:
    """The model's max_position_embeddings, capped by `requested`; `requested` alone when the config has none."""
    native = getattr(config, "max_position_embeddings", None)
    if native is None and requested is None:
        raise ValueError("max_model_len is required: the model config has no max_position_embeddings")
    if native is None:
        return int(requested)
    return int(native) if requested is None else min(int(native), int(requested))
