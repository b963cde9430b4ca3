"""POST /v1/embeddings."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from serving.api.common import get_router, json_response
from serving.protocol.embeddings import EmbeddingRequest, EmbeddingResponse
from serving.router import ModelRouter

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(body: EmbeddingRequest, models: ModelRouter = Depends(get_router)) -> Response:
    """One vector per input, as floats or base64 float32; `dimensions` must be the model's own."""
    client = models.client(body.model, "embedding")
    known = models.card(body.model).metadata.get("dimensions")
    if known is not None:  # refuse before computing when the card says the size
        body.check_dimensions(int(known))
    result = await client.embed(body.inputs())
    body.check_dimensions(int(result.vectors.shape[1]))
    return json_response(
        EmbeddingResponse.from_vectors(result.vectors, body.model, result.prompt_tokens, body.encoding_format)
    )
