"""/admin/models: list, get, register, update, deploy, undeploy, delete (model names may contain "/")."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from serving.admin.auth import admin_actor
from serving.admin.schemas import (DeletedModel, EngineReport, ModelRegistration, ModelUpdate, RegistryModel,
                                   RegistryModelList)
from serving.admin.service import RegistryAdmin

router = APIRouter(prefix="/admin/models", tags=["admin"])


async def get_admin(request: Request) -> RegistryAdmin:
    return request.app.state.admin


@router.get("")
async def list_models(admin: RegistryAdmin = Depends(get_admin)) -> RegistryModelList:
    """Every registered model, whatever its status, with its replicas (target, running, ...); rows that cannot be
    read are listed apart, with the reason."""
    return RegistryModelList.of(await admin.list(), await admin.replicas())


@router.post("", status_code=201)
async def register_model(
    body: ModelRegistration, admin: RegistryAdmin = Depends(get_admin), actor: str = Depends(admin_actor)
) -> RegistryModel:
    """Validate (the configuration, then the source), store, and deploy unless `deploy` is false.
    409 when the name or an alias is taken; poll GET until `status` is `ready` or `failed`."""
    return RegistryModel.of(await admin.register(body.spec(), body.deploy, actor))


@router.post("/{name:path}/deploy", status_code=202)
async def deploy_model(
    name: str, admin: RegistryAdmin = Depends(get_admin), actor: str = Depends(admin_actor)
) -> RegistryModel:
    """Mark the model deployed and start deploying it (status `deploying`, then `ready` or `failed`)."""
    return RegistryModel.of(await admin.deploy(name, actor))


@router.post("/{name:path}/undeploy", status_code=202)
async def undeploy_model(
    name: str, admin: RegistryAdmin = Depends(get_admin), actor: str = Depends(admin_actor)
) -> RegistryModel:
    """Stop routing to the model at once (its new requests get 404), drain in-flight requests, then remove its
    replicas (status `stopping`, then `stopped`). The entry stays registered."""
    return RegistryModel.of(await admin.undeploy(name, actor))


@router.get("/{name:path}/engine")
async def get_engine(name: str, admin: RegistryAdmin = Depends(get_admin)) -> EngineReport:
    """The engine of a deployed chat model: which path it runs (batched, device, CUDA graphs) and its load. (This
    route comes first: a model whose own name ends in `/engine` is read from the listing.)"""
    return EngineReport(model=name, stats=await admin.engine(name))


@router.get("/{name:path}")
async def get_model(name: str, admin: RegistryAdmin = Depends(get_admin)) -> RegistryModel:
    """The entry and its replicas: `replicas.target` is what Serve's autoscaler aims for, `running` what serves."""
    entry = await admin.get(name)
    return RegistryModel.of(entry, (await admin.replicas()).get(name))


@router.patch("/{name:path}")
async def update_model(
    name: str, body: ModelUpdate, admin: RegistryAdmin = Depends(get_admin), actor: str = Depends(admin_actor)
) -> RegistryModel:
    """Change some settings. A deployed model is redeployed when its deployment changed (status `updating`
    while the old replicas keep serving); aliases and description apply without a redeploy."""
    return RegistryModel.of(await admin.update(name, body, actor))


@router.delete("/{name:path}")
async def delete_model(
    name: str, admin: RegistryAdmin = Depends(get_admin), actor: str = Depends(admin_actor)
) -> DeletedModel:
    """Remove the model from the registry; if it was deployed, it is drained and removed from Ray Serve."""
    return DeletedModel(id=await admin.delete(name, actor))
