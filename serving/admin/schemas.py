"""JSON in and out of /admin/models (pydantic; the OpenAPI schema at /admin/openapi.json comes from these)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from serving.config import AutoscalingConfig, BatchingConfig, Device, DType, ModelConfig, ResourcesConfig
from serving.registry.controller import Replicas
from serving.registry.entry import STATUSES, ModelEntry, Status, epoch
from serving.registry.store import RegistryListing


class ModelRegistration(ModelConfig):
    """POST /admin/models: a model's configuration (as in the YAML file) and whether to deploy it now."""

    deploy: bool = Field(True, description="deploy right away; false only registers it (status `registered`)")

    def spec(self) -> ModelConfig:
        return ModelConfig.model_validate(self.model_dump(exclude={"deploy"}))


class _Partial(BaseModel):
    model_config = ConfigDict(extra="forbid")


def partial(group: type[BaseModel]) -> type[_Partial]:
    """A configuration group's fields, each optional (None: not sent), for a PATCH that merges field by field.
    Values are checked when the merged configuration is validated."""
    fields = {name: (f.annotation | None, Field(None, description=f.description))
              for name, f in group.model_fields.items()}
    return create_model(group.__name__.replace("Config", "Update"), __base__=_Partial, **fields)


BatchingUpdate = partial(BatchingConfig)
ResourcesUpdate = partial(ResourcesConfig)
AutoscalingUpdate = partial(AutoscalingConfig)
MERGED = ("batching", "resources", "autoscaling")  # PATCH merges these field by field


class ModelUpdate(_Partial):
    """PATCH /admin/models/{name}: only the fields sent change; `batching`, `resources` and `autoscaling` merge
    field by field (autoscaling starts from the defaults when the model had none; `autoscaling: null` goes back to
    num_replicas); `null` puts a field back to its default. The name and task cannot change (delete and register
    instead)."""

    source: str | None = None
    revision: str | None = None
    dtype: DType | None = None
    device: Device | None = None
    num_replicas: int | None = None
    max_ongoing_requests: int | None = None
    max_queued_requests: int | None = None
    queue_timeout_s: float | None = None
    request_timeout_s: float | None = None
    torch_threads: int | None = None
    batching: BatchingUpdate | None = None
    resources: ResourcesUpdate | None = None
    autoscaling: AutoscalingUpdate | None = None
    options: dict[str, Any] | None = None
    description: str | None = None
    aliases: list[str] | None = None
    upstream: dict[str, Any] | None = Field(
        None, description="fields of the upstream section; they merge into an upstream model's current ones"
    )
    fallbacks: list[str] | None = None

    def apply(self, current: ModelConfig) -> dict:
        """`current` with these changes, as a dict still to be validated as a ModelConfig."""
        merged = current.model_dump()
        for key, value in self.model_dump(exclude_unset=True).items():
            if value is None:
                merged.pop(key, None)
            elif key in MERGED:
                merged[key] = {**(merged.get(key) or {}), **{k: v for k, v in value.items() if v is not None}}
            elif key == "upstream" and merged.get("upstream"):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return merged


class ReplicaDetail(BaseModel):
    id: str
    state: str = Field(description="Ray Serve's replica state: STARTING, RUNNING, STOPPING, ...")
    node_id: str | None = None
    gpu_ids: list[str] | None = Field(None, description="the GPUs Ray gave the replica (as the replica reported)")
    device: str | None = Field(None, description="the device its backend uses (cpu, cuda)")
    cuda_visible_devices: str | None = Field(None, description="CUDA_VISIBLE_DEVICES in the replica (Ray sets it)")


class ReplicaSummary(BaseModel):
    """A model's replicas as Ray Serve reports them (the autoscaler moves `target` between min and max)."""

    target: int = Field(description="how many replicas Serve aims for now")
    running: int
    starting: int
    stopping: int
    replicas: list[ReplicaDetail]

    @classmethod
    def of(cls, replicas: Replicas) -> ReplicaSummary:
        return cls.model_validate(replicas.summary())


class RegistryModel(BaseModel):
    """A registry entry: the configuration, what the operator wants (`deployed`) and what is (`status`)."""

    object: Literal["registry.model"] = "registry.model"
    name: str
    status: Status = Field(description=" | ".join(STATUSES) + "; `ready` and `updating` models serve requests")
    error: str | None = Field(None, description="why the last deploy failed (status `failed`)")
    deployed: bool = Field(description="whether the model should be serving (restarts keep it)")
    version: int = Field(description="+1 on every configuration change")
    created_at: int
    updated_at: int
    status_at: int
    created_by: str
    updated_by: str
    config: ModelConfig
    replicas: ReplicaSummary | None = Field(None, description="its replicas now (deployed models; null if unknown)")

    @classmethod
    def of(cls, entry: ModelEntry, replicas: Replicas | None = None) -> RegistryModel:
        return cls(
            name=entry.name, status=entry.status, error=entry.error, deployed=entry.deployed, version=entry.version,
            created_at=epoch(entry.created_at), updated_at=epoch(entry.updated_at), status_at=epoch(entry.status_at),
            created_by=entry.created_by, updated_by=entry.updated_by, config=entry.spec,
            replicas=ReplicaSummary.of(replicas) if replicas is not None else None,
        )


class InvalidRegistryModel(BaseModel):
    """A registry row the server cannot read (edited by hand, damaged): not served; DELETE removes it."""

    object: Literal["registry.invalid_model"] = "registry.invalid_model"
    name: str
    error: str = Field(description="why the row cannot be read, e.g. the field that fails validation")


class RegistryModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RegistryModel]
    invalid: list[InvalidRegistryModel] = Field(default_factory=list, description="rows that cannot be read")

    @classmethod
    def of(cls, listing: RegistryListing, replicas: dict[str, Replicas] | None = None) -> RegistryModelList:
        replicas = replicas or {}
        return cls(data=[RegistryModel.of(e, replicas.get(e.name)) for e in listing.entries],
                   invalid=[InvalidRegistryModel(name=e.name, error=e.error) for e in listing.invalid])


class EngineReport(BaseModel):
    """GET /admin/models/{name}/engine: the stats of one replica's engine (models.llm.types.EngineStats), which
    say the path it runs: `batched` (false: one forward per request), `device`, `cuda_graphs_on`, and how many
    `cuda_graphs` were captured at load. `stats` is null only for an engine that reports none."""

    model: str
    stats: dict[str, Any] | None


class DeletedModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
