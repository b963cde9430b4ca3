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


def generate_images(backend: ImageBackend, items: list[tuple[str, ImageParams]]) -> list:
    return backend.generate([p for p, _ in items], [params for _, params in items])


@serve.deployment
class ImageDeployment:
    def __init__(self, spec: dict, data_dir: str, report_to: str | None = None):
        self.model, self.backend = load_backend(place_replica(spec, report_to), data_dir)
        run = lambda items: generate_images(self.backend, items)  # noqa: E731
        self._merger = batch_merger(self.model, run)

    async def generate(self, prompt: str, params: ImageParams, n: int) -> list[bytes]:
        """n PNGs; image i uses seed + i when a seed is given. Encoded in worker threads, not on the merger's
        thread: there the encoding of one batch would hold back the pipeline's next batch."""
        per_image = [replace(params, seed=None if params.seed is None else params.seed + i) for i in range(n)]
        results = await asyncio.gather(*[self._merger.submit((prompt, p)) for p in per_image])
        images = [item_result(r) for r in results]
        return list(await asyncio.gather(*[asyncio.to_thread(to_png, image) for image in images]))
