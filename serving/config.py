"""The server's YAML configuration, validated by pydantic on load (unknown keys are errors)."""
from __future__ import annotations

import os
import re
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.upstream.config import UpstreamConfig

Task = Literal["chat", "embedding", "image", "speech"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
DEFAULT_CONFIG = "configs/default.yaml"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _lone_surrogate(value: Any) -> str | None:
    """The first string in `value` (nested dicts and lists too) that is not valid Unicode, or None. JSON and YAML
    escapes can carry lone surrogates ("\\ud800"), which no database, log or JSON response can encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        bad = _lone_surrogate(key) if isinstance(key, str) else None
        if bad is not None or (bad := _lone_surrogate(item)) is not None:
            return bad
    return None


class BatchingConfig(StrictModel):
    """Per-replica batching (serving/deployments/merge.py): calls per forward pass, and how long the next pass waits
    for more after a pass of several (embedding, image and speech models)."""

    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0)


class ResourcesConfig(StrictModel):
    """Ray resources reserved by each replica of the model's deployment (num_gpus may be fractional).

    They are Ray's logical resources, a share for placing replicas, not a limit on threads: a CPU replica computes
    on every core (torch_threads). The small default lets several models share a small machine (docs/scaling.md)."""

    num_cpus: float = Field(0.25, ge=0, description="Ray CPUs per replica (a share of the node, not threads)")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs per replica; fractions share a GPU")
    custom: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources per replica, e.g. {special: 1} (placement by node)"
    )

    @field_validator("custom")
    @classmethod
    def _custom_is_not_cpu_or_gpu(cls, v: dict[str, float]) -> dict[str, float]:
        reserved = sorted(set(v) & {"CPU", "GPU", "memory", "object_store_memory"})
        if reserved:
            raise ValueError(f"{reserved[0]} is not a custom resource (use num_cpus / num_gpus)")
        if any(amount < 0 for amount in v.values()):
            raise ValueError("custom resource amounts must not be negative")
        return v

    def demand(self) -> dict[str, float]:
        """What one replica asks Ray for, by Ray's resource names (zero amounts left out)."""
        need = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.custom}
        return {k: v for k, v in need.items() if v > 0}


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling of a model's replicas (replaces num_replicas when set); min_replicas 0 scales to zero."""

    min_replicas: int = Field(1, ge=0, le=64, description="0: no replica while idle (a request starts one)")
    max_replicas: int = Field(1, ge=1, le=64)
    target_ongoing_requests: float = Field(2.0, gt=0, description="in-flight requests per replica to aim for")
    upscale_delay_s: float = Field(30.0, ge=0, description="load must last this long before a replica is added")
    downscale_delay_s: float = Field(600.0, ge=0, description="idleness must last this long before one is removed")
    look_back_period_s: float = Field(30.0, gt=0, description="the window over which Serve averages the load")
    cold_start_timeout_s: float = Field(
        300.0, gt=0, le=3600,
        description="at zero replicas, how long a request waits for one to start; then 503 with Retry-After",
    )

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


MODEL_ID = r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}"
MODEL_APP_PREFIX = "model:"
GROUP_APP_PREFIX = "group:"
GROUP_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
COLOCATED_TASKS = ("embedding", "image", "speech")
UPSTREAM_SOURCE = "upstream"  # the source of a model that a remote server serves (see `upstream`)


def deployment_name(model: str) -> str:
    """The Ray Serve application (and deployment) name of a model. Ray names cannot hold '/'; '~' cannot appear in
    a model id, so the mapping is one-to-one."""
    return MODEL_APP_PREFIX + model.replace("/", "~")


def group_app_name(group: str) -> str:
    """The Ray Serve application (and deployment) name of a colocation group (`colocate`): one for all its models."""
    return GROUP_APP_PREFIX + group


class ModelConfig(StrictModel):
    name: str = Field(..., description="the OpenAI `model` id clients send")
    task: Task
    source: str | None = Field(
        None, description="package:, builtin:, fake:, hf:, a hub id, or a local path; none for an upstream model"
    )
    revision: str | None = Field(None, description="a Hub branch, tag or commit (Hub sources only)")
    dtype: DType = "auto"
    device: Device = "auto"
    num_replicas: int = Field(1, ge=1, le=64)
    max_ongoing_requests: int | None = Field(
        None, ge=1, le=100_000,
        description="requests one replica holds at once; default 64, for chat the engine's max_running + max_queued",
    )
    max_queued_requests: int | None = Field(
        None, ge=1, le=100_000,
        description="requests waiting for a replica beyond that (then 429); default: what the replicas hold at once",
    )
    queue_timeout_s: float | None = Field(
        None, gt=0, le=86_400, description="default server.queue_timeout_s: longest wait for an answer to begin (503)"
    )
    request_timeout_s: float | None = Field(
        None, gt=0, le=86_400, description="default server.request_timeout_s: longest whole request (then 504)"
    )
    torch_threads: int | None = Field(None, ge=1, description="default: every core (Ray would set num_cpus)")
    batching: BatchingConfig = BatchingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    autoscaling: AutoscalingConfig | None = Field(None, description="when set, Ray Serve scales the replicas")
    options: dict[str, Any] = Field(default_factory=dict, description="backend-specific settings")
    description: str | None = Field(None, max_length=4096)
    aliases: list[str] = Field(default_factory=list, description="other `model` ids that reach this model")
    upstream: UpstreamConfig | None = Field(None, description="served by this remote server, not by a replica")
    fallbacks: list[str] = Field(
        default_factory=list, description="models that answer, in order, while this one is unavailable or overloaded"
    )
    colocate: str | None = Field(
        None, description="models with the same value share one replica process (one Python, one torch): less "
        "memory on a small machine; embedding, image and speech models with one replica, no autoscaling",
    )

    @field_validator("name")
    @classmethod
    def _name_is_an_id(cls, v: str) -> str:
        if not re.fullmatch(MODEL_ID, v):
            raise ValueError("model names use letters, digits and . _ : / - (at most 128 characters)")
        return v

    @field_validator("aliases", "fallbacks")
    @classmethod
    def _aliases_are_ids(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if not re.fullmatch(MODEL_ID, a)]
        if bad:
            raise ValueError(f"aliases use letters, digits and . _ : / - (at most 128 characters): {bad[0]!r}")
        if len(set(v)) != len(v):
            raise ValueError("aliases must be unique")
        return v

    @model_validator(mode="after")
    def _alias_is_not_the_name(self) -> "ModelConfig":
        if self.name in self.aliases:
            raise ValueError("a model's aliases must differ from its name")
        if {self.name, *self.aliases} & set(self.fallbacks):
            raise ValueError("a model cannot be its own fallback")
        return self

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if _lone_surrogate(data) is not None:
            raise ValueError("text must be valid Unicode (a lone surrogate escape such as \\ud800 is not)")
        return data

    @model_validator(mode="before")
    @classmethod
    def _upstream_source(cls, data: Any) -> Any:
        """An upstream model's source reads `upstream` (the column is never empty)."""
        if isinstance(data, dict) and data.get("upstream") is not None and data.get("source") is None:
            return {**data, "source": UPSTREAM_SOURCE}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        """A model has a source (a replica loads it) or an upstream (a remote server serves it), not both."""
        if self.source is None:
            raise ValueError("source: Field required (or give `upstream` for a model a remote server serves)")
        if (self.upstream is not None) != (self.source == UPSTREAM_SOURCE):
            raise ValueError("an upstream model has no source, and `source: upstream` needs an `upstream` section")
        return self

    @model_validator(mode="after")
    def _colocation(self) -> "ModelConfig":
        """Models that share a process are served by one replica whose members load and unload in place (a chat
        model has an engine process of its own; an upstream model has no replica)."""
        if self.colocate is None:
            return self
        if not re.fullmatch(GROUP_ID, self.colocate):
            raise ValueError("colocate names use letters, digits and . _ - (at most 64 characters)")
        if self.task not in COLOCATED_TASKS or self.upstream is not None:
            raise ValueError(f"colocate: only {', '.join(COLOCATED_TASKS)} models served here share a process")
        if self.autoscaling is not None or self.num_replicas != 1:
            raise ValueError("colocate: models that share a process have one replica (num_replicas 1, no autoscaling)")
        return self

    @property
    def deployment_name(self) -> str:
        """The Serve application serving the model: its own, or its colocation group's."""
        return group_app_name(self.colocate) if self.colocate else deployment_name(self.name)

    @property
    def initial_replicas(self) -> int:
        """How many replicas a deploy starts (and places) before the model is ready."""
        return self.num_replicas if self.autoscaling is None else self.autoscaling.min_replicas

    @property
    def cold_start_timeout_s(self) -> float | None:
        """How long a request may wait for a replica to take it: bounded for a model that scales to zero."""
        if self.autoscaling is None or self.autoscaling.min_replicas > 0:
            return None
        return self.autoscaling.cold_start_timeout_s

    def deployment_spec(self) -> dict:
        """What the model's replicas are built from: every field but those that only the router reads."""
        return self.model_dump(exclude={"aliases", "description", "fallbacks"})


class ServerConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: str = Field("~/.cache/openserve", description="caches (converted GGUF, built pipelines), Ray files")
    max_request_bytes: int = Field(10 * 2**20, ge=1024)
    api_keys: list[str] = Field(
        default_factory=list, description="when set, requests need `Bearer <key>`; a key or its `sha256:<hex>`"
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="default: the machine's cores")
    ray_num_gpus: int | None = Field(None, ge=0, description="GPUs of a local Ray (default: the ones Ray detects)")
    ray_object_store_mb: int = Field(200, ge=64)
    admin_api_keys: list[str] = Field(
        default_factory=list, description="keys for /admin (Bearer), or their `sha256:<hex>`; when there is no admin "
        "key at all, /admin answers loopback clients only"
    )
    registry_url: str | None = Field(
        None, description="SQLAlchemy URL of the model registry; default sqlite:///<data_dir>/registry.db"
    )
    deploy_timeout_s: float = Field(1800.0, gt=0, description="a model not ready this long after deploy fails")
    schedule_timeout_s: float = Field(
        90.0, gt=0, description="a replica waiting this long for Ray resources fails (Ray reports it after 30 s)"
    )
    check_cluster_resources: bool = Field(
        True, description="fail a deploy at once when no Ray node has the resources one replica asks for"
    )
    routes_refresh_s: float = Field(1.0, gt=0, le=60, description="how often the ingress re-reads the registry")
    keys_refresh_s: float = Field(
        0.5, gt=0, le=60, description="how often the ingress re-reads the registry's API keys (revocation delay)"
    )
    metrics: bool = Field(True, description="Prometheus metrics at /metrics")
    access_log: bool = Field(True, description="one log line per request")
    log_format: Literal["text", "json"] = Field("text", description="the server's own log lines")
    queue_timeout_s: float = Field(
        60.0, gt=0, le=86_400,
        description="a request without its first chunk (a stream) or its result (a unary call) this long: 503",
    )
    request_timeout_s: float = Field(
        600.0, gt=0, le=86_400, description="a request, streams included, not finished this long: 504 (cancelled)"
    )
    max_connections: int = Field(
        1000, ge=1, le=1_000_000, description="open HTTP connections; a request on one more gets 503"
    )

    @property
    def resolved_data_dir(self) -> str:
        return os.path.abspath(os.path.expanduser(self.data_dir))

    @property
    def resolved_registry_url(self) -> str:
        return self.registry_url or "sqlite:///" + os.path.join(self.resolved_data_dir, "registry.db")


class AppConfig(StrictModel):
    server: ServerConfig = ServerConfig()
    models: list[ModelConfig] = Field(
        default_factory=list, description="seeds the registry on its first start (docs/operations.md)"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> "AppConfig":
        names = [n for m in self.models for n in (m.name, *m.aliases)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names and aliases must be unique; repeated: {', '.join(dupes)}")
        return self


class ConfigError(ValueError):
    """A configuration file that is missing, not YAML, or not valid; the message lists every problem."""


def _format_validation_error(path: str, err: ValidationError) -> str:
    lines = [f"invalid configuration {path}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, path: str = "<config>") -> AppConfig:
    """Validate already-parsed YAML; raises ConfigError with one line per problem."""
    try:
        return AppConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(path, err)) from None


def load_config(path: str | None = None) -> AppConfig:
    """Load a YAML file, or the embedded default when path is None."""
    if path is None:
        text = resources.files("configs").joinpath("default.yaml").read_text()
        path = DEFAULT_CONFIG
    else:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read configuration {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"configuration {path} is not valid YAML: {e}") from None
    return parse_config(data, path)
