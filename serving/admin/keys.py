"""/admin/keys: create (the secret shown once), list, show, revoke API keys; and what each route does.

Revocation applies to this ingress' key ring at once, and to other ingresses at their next key poll
(server.keys_refresh_s).
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.admin.auth import admin_actor
from serving.config import MODEL_ID
from serving.keys.records import KeyLimits, KeyRecord
from serving.keys.ring import KeyRing
from serving.keys.store import KeyStore
from serving.registry.entry import epoch

log = logging.getLogger("serving.admin")
router = APIRouter(prefix="/admin/keys", tags=["admin: keys"])


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests_per_minute: int | None = Field(None, ge=1, description="a burst of this many, refilled evenly")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="LLM prompt + completion tokens, embedding input tokens, images, speech characters"
    )
    max_concurrent: int | None = Field(None, ge=1, description="requests in flight at once")


class KeyCreate(BaseModel):
    """POST /admin/keys."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=128, description="who or what the key is for")
    scopes: list[Literal["inference", "admin"]] = Field(["inference"], min_length=1)
    models: list[str] | None = Field(None, description="the models (names or aliases) it may use; null: all")
    limits: LimitsBody = LimitsBody()

    @field_validator("models")
    @classmethod
    def _model_ids(cls, v: list[str] | None) -> list[str] | None:
        bad = [m for m in v or [] if not re.fullmatch(MODEL_ID, m)]
        if bad:
            raise ValueError(f"not a model id: {bad[0]!r}")
        return v


class KeyObject(BaseModel):
    """A key as the admin API shows it: never the secret, never its hash."""

    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    scopes: list[str]
    models: list[str] | None
    limits: LimitsBody
    created_at: int | None
    created_by: str
    revoked_at: int | None

    @classmethod
    def of(cls, record: KeyRecord) -> "KeyObject":
        limits = LimitsBody(**vars(record.limits))
        return cls(id=record.id, name=record.name, scopes=list(record.scopes),
                   models=list(record.models) if record.models is not None else None, limits=limits,
                   created_at=epoch(record.created_at) if record.created_at else None,
                   created_by=record.created_by,
                   revoked_at=epoch(record.revoked_at) if record.revoked_at else None)


class CreatedKey(KeyObject):
    key: str = Field(..., description="the secret: shown this once, stored only as a hash")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyObject]


class KeyAdmin:
    def __init__(self, store: KeyStore, ring: KeyRing):
        self.store = store
        self.ring = ring

    async def create(self, body: KeyCreate, actor: str) -> tuple[KeyRecord, str]:
        limits = KeyLimits(**body.limits.model_dump())
        models = tuple(body.models) if body.models is not None else None
        record, secret = await asyncio.to_thread(self.store.create, body.name, tuple(dict.fromkeys(body.scopes)),
                                                 models, limits, actor)
        self.ring.add(record)
        log.info("key %s (%s) created by %s", record.id, record.name, actor)
        return record, secret

    async def revoke(self, key_id: str, actor: str) -> KeyRecord:
        record = await asyncio.to_thread(self.store.revoke, key_id)
        self.ring.remove(record)
        log.info("key %s revoked by %s", key_id, actor)
        return record


async def get_keys(request: Request) -> KeyAdmin:
    return request.app.state.keys


@router.get("")
async def list_keys(keys: KeyAdmin = Depends(get_keys)) -> KeyList:
    """Every key made through the admin API, revoked ones included (keys from the YAML are not listed)."""
    return KeyList(data=[KeyObject.of(r) for r in await asyncio.to_thread(keys.store.list)])


@router.post("", status_code=201)
async def create_key(body: KeyCreate, keys: KeyAdmin = Depends(get_keys),
                     actor: str = Depends(admin_actor)) -> CreatedKey:
    """A new key, usable at once; `key` is the secret, returned only in this response."""
    record, secret = await keys.create(body, actor)
    return CreatedKey(**KeyObject.of(record).model_dump(), key=secret)


@router.get("/{key_id}")
async def get_key(key_id: str, keys: KeyAdmin = Depends(get_keys)) -> KeyObject:
    return KeyObject.of(await asyncio.to_thread(keys.store.get, key_id))


@router.post("/{key_id}/revoke")
async def revoke_key(key_id: str, keys: KeyAdmin = Depends(get_keys), actor: str = Depends(admin_actor)) -> KeyObject:
    """Refuse the key from now on (401); it stays listed, with `revoked_at`."""
    return KeyObject.of(await keys.revoke(key_id, actor))
