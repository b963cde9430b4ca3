"""A text-to-image model: each requested image is one batch item, so n images and concurrent requests share batches."""
from __future__ import annotations

import asyncio
import io
from dataclasses import replace

from ray import serve

from models.images.types import ImageBackend, ImageParams
from serving.config import ModelConfig
from serving.deployments.common import ServedModel, item_result, load_backend
from serving.deployments.placement import place_replica


def to_png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def generate_images(backend: ImageBackend, items: list[tuple[str, ImageParams]]) -> list:
    return backend.generate([p for p, _ in items], [params for _, params in items])


class ImageModel(ServedModel):
    """A text-to-image model in this process: each requested image is one item of the merger."""

    def __init__(self, model: ModelConfig, backend: ImageBackend):
        super().__init__(model, backend, lambda items: generate_images(backend, items))

    async def generate(self, prompt: str, params: ImageParams, n: int) -> list[bytes]:
        """n PNGs; image i uses seed + i when a seed is given. Encoded in worker threads, not on the merger's
        thread: there the encoding of one batch would hold back the pipeline's next batch."""
        per_image = [replace(params, seed=None if params.seed is None else params.seed + i) for i in range(n)]
        results = await asyncio.gather(*[self.merger.submit((prompt, p)) for p in per_image])
        images = [item_result(r) for r in results]
        return list(await asyncio.gather(*[asyncio.to_thread(to_png, image) for image in images]))


@serve.deployment
class ImageDeployment:
    """One image model's own replica."""

    def __init__(self, spec: dict, data_dir: str, report_to: str | None = None):
        self.served = ImageModel(*load_backend(place_replica(spec, report_to), data_dir))

    async def generate(self, prompt: str, params: ImageParams, n: int, model: str | None = None) -> list[bytes]:
        """ImageModel.generate; `model` (the name the ingress sends every replica) is this replica's own."""
        return await self.served.generate(prompt, params, n)
