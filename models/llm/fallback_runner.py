"""The slow path for models slot attention cannot drive: one forward per request per step, each request with the
KV cache the model itself returns (a DynamicCache). No padding and no masks, so every request gets exactly the
tokens `model.generate` would give it alone. Same interface as BatchedModelRunner. Each request's cache object is
kept on the request (`runner_state`), so it goes when the request finishes or is aborted.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from models.llm.device_io import upload
from models.llm.request import EngineRequest


class PerRequestRunner:
    def __init__(self, model: Any):
        self.model = model
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._keep_last_logits = "logits_to_keep" in params
        # Newer transformers (5.24) call it `cache` and warn on `past_key_values`; older ones know only the latter.
        self._cache_name = "cache" if "cache" in params else "past_key_values"

    def execute(self, work: list[tuple[EngineRequest, int]]) -> tuple[list[EngineRequest], torch.Tensor | None]:
        """Feed each (request, count) its next `count` tokens; return (requests that sample, logits [R, V])."""
        sampled, rows = [], []
        for request, count in work:
            logits = self._forward(request, count)  # [1, V]
            if count == request.num_pending:
                sampled.append(request)
                rows.append(logits)
        return sampled, torch.cat(rows) if rows else None

    def _forward(self, request: EngineRequest, count: int) -> torch.Tensor:
        input_ids = upload([request.pending_tokens(count)], torch.long, self.device)  # [1, T]
        kwargs = {self._cache_name: request.runner_state, "use_cache": True}
        if self._keep_last_logits:
            kwargs["logits_to_keep"] = 1  # skip the [T, V] logits of all but the last position
        out = self.model(input_ids=input_ids, **kwargs)
        request.runner_state = out[self._cache_name]
        return out.logits[:, -1, :]  # [1, V]
