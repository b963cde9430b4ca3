"""POST /tokenize and /detokenize (vLLM's routes and shapes) for chat models."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from serving.api.common import context_size, get_router, json_response
from serving.protocol.common import random_id
from serving.protocol.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from serving.router import ModelRouter

router = APIRouter(tags=["tokenize"])


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, models: ModelRouter = Depends(get_router)) -> Response:
    """The token ids of a prompt, or of messages through the model's chat template."""
    client = models.client(body.model, "chat")
    request, special = body.to_generation_request(random_id("tok"))
    tokens = await client.tokenize(request, special)
    return json_response(TokenizeResponse(count=len(tokens), max_model_len=context_size(models.card(body.model)),
                                          tokens=tokens))


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, models: ModelRouter = Depends(get_router)) -> Response:
    """The text of token ids."""
    client = models.client(body.model, "chat")
    return json_response(DetokenizeResponse(prompt=await client.detokenize(list(body.tokens))))
