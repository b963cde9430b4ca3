"""A text-to-image model: each requested image is one batch item, so n images and concurrent requests share batches."""
from __future__ import annotations

import asyncio
import io
from dataclasses import replace

from ray import serve

from models.images.types import ImageBackend, ImageParams
from serving.deployments.common import batch_merger, item_result, load_backend
from serving.deployments.placement import place_replica


def to_png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def generate_pngs(backend: ImageBackend, items: list[tuple[str, ImageParams]]) -> list[bytes]:
    images = backend.generate([p for p, _ in items], [params for _, params in items])
    return [to_png(im) for im in images]


@serve.deployment
class ImageDeployment:
    def __init__(self, spec: dict, data_dir: str, report_to: str | None = None):
        self.model, self.backend = load_backend(place_replica(spec, report_to), data_dir)
        run = lambda items: generate_pngs(self.backend, items)  # noqa: E731
        self._merger = batch_merger(self.model, run)

    async def generate(self, prompt: str, params: ImageParams, n: int) -> list[bytes]:
        """n PNGs; image i uses seed + i when a seed is given."""
        per_image = [replace(params, seed=None if params.seed is None else params.seed + i) for i in range(n)]
        results = await asyncio.gather(*[self._merger.submit((prompt, p)) for p in per_image])
        return [item_result(r) for r in results]
