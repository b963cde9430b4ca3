"""GET /v1/models, GET /v1/models/{model_id} (ids may contain "/")."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from serving.api.common import get_router
from serving.protocol.models import ModelList, ModelObject
from serving.router import ModelRouter

router = APIRouter(tags=["models"])


@router.get("/v1/models")
async def list_models(models: ModelRouter = Depends(get_router)) -> ModelList:
    return ModelList(data=[ModelObject.from_card(card) for card in models.cards()])


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, models: ModelRouter = Depends(get_router)) -> ModelObject:
    """The model's card; 404 model_not_found if no such model is served."""
    return ModelObject.from_card(models.card(model_id))
