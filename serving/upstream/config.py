"""The configuration of an upstream model: where the remote server is, which model it names, how to reach it."""
from __future__ import annotations

import os
import re
from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,127}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerConfig(_Strict):
    """When the circuit opens, and for how long. It opens on `failures` consecutive failures, or when at least
    `min_requests` calls in the last `window_s` seconds failed at a rate of `error_rate` or more."""

    failures: int = Field(5, ge=1, le=1000, description="consecutive failures that open the circuit")
    error_rate: float = Field(0.5, gt=0.0, le=1.0, description="failed share of the window's calls that opens it")
    window_s: float = Field(30.0, gt=0, le=3600)
    min_requests: int = Field(20, ge=1, description="calls the window needs before error_rate applies")
    open_s: float = Field(10.0, gt=0, le=3600, description="open this long, then half-open (a probe may pass)")
    half_open_probes: int = Field(1, ge=1, le=100, description="calls let through at once while half-open")


class UpstreamConfig(_Strict):
    """A remote OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama, another openserve). The API key is read
    from the environment variable named here, in the server's processes: the registry never holds a key."""

    base_url: str = Field(..., description="up to and including the API's version, e.g. https://api.openai.com/v1")
    model: str | None = Field(None, description="the remote's model id (default: this model's name)")
    api_key_env: str | None = Field(None, description="NAME of the environment variable that holds the API key")
    connect_timeout_s: float = Field(5.0, gt=0, le=600)
    read_timeout_s: float = Field(60.0, gt=0, le=3600, description="longest wait for the first byte and between two")
    retries: int = Field(2, ge=0, le=10, description="retries of a call that failed before any byte of a response")
    retry_backoff_s: float = Field(0.2, ge=0, le=60, description="first retry's mean wait; doubles, with jitter")
    max_connections: int = Field(100, ge=1, le=10_000, description="pooled connections to the remote")
    health_check_s: float = Field(10.0, ge=0, le=3600, description="GET <base_url>/models this often; 0: never")
    breaker: BreakerConfig = BreakerConfig()

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", v):
            raise ValueError("base_url must be an http:// or https:// URL without query or fragment")
        return v.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(ENV_NAME, v):
            raise ValueError("api_key_env is the NAME of an environment variable (letters, digits, _), not a key")
        return v

    @model_validator(mode="after")
    def _read_covers_connect(self) -> "UpstreamConfig":
        if self.read_timeout_s < self.connect_timeout_s:
            raise ValueError("read_timeout_s must be at least connect_timeout_s")
        return self

    def remote_model(self, name: str) -> str:
        return self.model or name


def key_problem(config: UpstreamConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """Why the upstream's API key cannot be read here (its variable is unset or empty), or None."""
    if config.api_key_env and not environ.get(config.api_key_env):
        return f"the environment variable {config.api_key_env} (upstream.api_key_env) is not set in the server's environment"
    return None
