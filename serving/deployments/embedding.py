"""An embedding model: the requests of each call (merged by the ingress) and of every call that arrives meanwhile
are encoded together (serving/deployments/merge.py)."""
from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from models.embeddings.types import EmbeddingBackend
from serving.clients import EmbeddingResult
from serving.config import ModelConfig
from serving.deployments.common import ItemError, ServedModel, load_backend
from serving.deployments.placement import place_replica


def embed_calls(backend: EmbeddingBackend, calls: list[list]) -> list[EmbeddingResult]:
    """Run several calls' inputs as one batch (texts and token-id lists apart) and split the result per call."""
    flat = [x for inputs in calls for x in inputs]
    vectors: list[np.ndarray | None] = [None] * len(flat)
    tokens = [0] * len(flat)
    for is_text in (True, False):
        positions = [p for p, x in enumerate(flat) if isinstance(x, str) == is_text]
        if positions:
            out = backend.embed([flat[p] for p in positions])
            for row, p in enumerate(positions):
                vectors[p], tokens[p] = out.vectors[row], out.num_tokens[row]
    results, start = [], 0
    for inputs in calls:
        end = start + len(inputs)
        results.append(EmbeddingResult(np.stack(vectors[start:end]).astype(np.float32), int(sum(tokens[start:end]))))
        start = end
    return results


class EmbeddingModel(ServedModel):
    """An embedding model in this process: the requests of each call, and of every call arriving meanwhile, are
    encoded together."""

    def __init__(self, model: ModelConfig, backend: EmbeddingBackend):
        super().__init__(model, backend, lambda calls: embed_calls(backend, calls))

    async def embed_many(self, calls: list[list[str] | list[list[int]]]) -> list[EmbeddingResult | ItemError]:
        """Several requests merged by the ingress, each its own item of the merger: one result or ItemError per
        request (the ingress raises a request's own error; its neighbours still get their vectors)."""
        return list(await asyncio.gather(*(self.merger.submit(list(inputs)) for inputs in calls)))


@serve.deployment
class EmbeddingDeployment:
    """One embedding model's own replica."""

    def __init__(self, spec: dict, data_dir: str, report_to: str | None = None):
        self.served = EmbeddingModel(*load_backend(place_replica(spec, report_to), data_dir))

    async def embed_many(self, calls: list, model: str | None = None) -> list[EmbeddingResult | ItemError]:
        """EmbeddingModel.embed_many; `model` (the name the ingress sends every replica) is this replica's own."""
        return await self.served.embed_many(calls)
