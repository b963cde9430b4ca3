"""The server's YAML configuration, validated by pydantic on load (unknown keys are errors)."""
from __future__ import annotations

import os
import re
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Task = Literal["chat", "embedding", "image", "speech"]
DEFAULT_CONFIG = "configs/default.yaml"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(StrictModel):
    """Ray `@serve.batch` limits: a batch runs when full or when the oldest call has waited this long."""

    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0)


class ResourcesConfig(StrictModel):
    """Ray resources reserved by each replica of the model's deployment (num_gpus may be fractional)."""

    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0.0, ge=0)


class ModelConfig(StrictModel):
    name: str = Field(..., description="the OpenAI `model` id clients send")
    task: Task
    source: str = Field(..., description="package:, builtin:, fake:, hf:, a hub id, or a local path")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_replicas: int = Field(1, ge=1, le=64)
    max_ongoing_requests: int = Field(64, ge=1, le=100_000)
    torch_threads: int | None = Field(None, ge=1, description="default: every core (Ray would set num_cpus)")
    batching: BatchingConfig = BatchingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    options: dict[str, Any] = Field(default_factory=dict, description="backend-specific settings")
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _name_is_an_id(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}", v):
            raise ValueError("model names use letters, digits and . _ : / - (at most 128 characters)")
        return v

    @property
    def deployment_name(self) -> str:
        """Ray deployment names cannot hold '/', model ids can."""
        return "model:" + self.name.replace("/", "--")


class ServerConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: str = Field("~/.cache/openserve", description="caches (converted GGUF, built pipelines), Ray files")
    max_request_bytes: int = Field(10 * 2**20, ge=1024)
    api_keys: list[str] = Field(default_factory=list, description="when set, requests need `Bearer <key>`")
    ray_num_cpus: int | None = Field(None, ge=1, description="default: the machine's cores")
    ray_object_store_mb: int = Field(200, ge=64)

    @property
    def resolved_data_dir(self) -> str:
        return os.path.abspath(os.path.expanduser(self.data_dir))


class AppConfig(StrictModel):
    server: ServerConfig = ServerConfig()
    models: list[ModelConfig] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "AppConfig":
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
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
