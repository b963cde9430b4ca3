"""An embedding model: the requests of each call (merged by the ingress) and of every call that arrives meanwhile
are encoded together (serving/deployments/merge.py)."""
from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from models.embeddings.types import EmbeddingBackend
from serving.clients import EmbeddingResult
from serving.deployments.common import ItemError, batch_merger, load_backend
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


@serve.deployment
class EmbeddingDeployment:
    def __init__(self, spec: dict, data_dir: str, report_to: str | None = None):
        self.model, self.backend = load_backend(place_replica(spec, report_to), data_dir)
        run = lambda calls: embed_calls(self.backend, calls)  # noqa: E731
        self._merger = batch_merger(self.model, run)

    async def embed_many(self, calls: list[list[str] | list[list[int]]]) -> list[EmbeddingResult | ItemError]:
        """Several requests merged by the ingress, each its own item of the merger: one result or ItemError per
        request (the ingress raises a request's own error; its neighbours still get their vectors)."""
        return list(await asyncio.gather(*(self._merger.submit(list(inputs)) for inputs in calls)))
