"""POST /v1/images/generations (b64_json PNGs only)."""
from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, Response

from serving.api.common import get_router, json_response
from serving.protocol.common import now
from serving.protocol.images import ImageData, ImageDefaults, ImageGenerationRequest, ImagesResponse
from serving.router import ModelRouter

router = APIRouter(tags=["images"])


@router.post("/v1/images/generations", response_model=ImagesResponse)
async def create_images(body: ImageGenerationRequest, models: ModelRouter = Depends(get_router)) -> Response:
    """n PNG images of `size`, base64-encoded; the model card's metadata gives the defaults and limits."""
    client = models.client(body.model, "image")
    params = body.to_image_params(ImageDefaults.from_metadata(models.card(body.model).metadata))
    pngs = await client.generate(body.prompt, params, body.n)
    data = [ImageData(b64_json=base64.b64encode(png).decode("ascii")) for png in pngs]
    return json_response(ImagesResponse(created=now(), data=data, size=f"{params.width}x{params.height}"))
