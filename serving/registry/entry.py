"""A registry entry: a model's configuration plus its desired and actual state."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from serving.config import ModelConfig

Status = Literal["registered", "deploying", "ready", "updating", "failed", "stopping", "stopped"]
STATUSES: tuple[str, ...] = ("registered", "deploying", "ready", "updating", "failed", "stopping", "stopped")


def utcnow() -> datetime:
    """Naive UTC (what every dialect stores alike)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def epoch(moment: datetime) -> int:
    return int(moment.replace(tzinfo=timezone.utc).timestamp())


@dataclass(frozen=True)
class ModelEntry:
    """`deployed` is what the operator asked for; `status` is what the controller last saw."""

    spec: ModelConfig
    deployed: bool
    status: str
    error: str | None
    version: int  # +1 on every configuration change
    created_at: datetime
    updated_at: datetime
    status_at: datetime
    created_by: str
    updated_by: str

    @property
    def name(self) -> str:
        return self.spec.name
