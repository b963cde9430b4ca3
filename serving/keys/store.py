"""KeyStore: API keys in the registry database (tables api_keys and api_keys_state, schema version 2).

Synchronous and thread-safe, one transaction per call, like RegistryStore (async callers use asyncio.to_thread).
Every write bumps `api_keys_state.generation`, so an ingress reloads its key ring only when something changed.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine

from serving.errors import NotFoundError
from serving.keys.records import KeyLimits, KeyRecord, hash_key, new_key_id, new_secret
from serving.registry import schema
from serving.registry.entry import utcnow
from serving.registry.database import DEFAULT_TIMEOUT_S, WRITE, bounded  # WRITE: SQLite locks at BEGIN


def _record(row) -> KeyRecord:
    limits = KeyLimits(row.requests_per_minute, row.tokens_per_minute, row.max_concurrent)
    models = tuple(row.models) if row.models is not None else None
    return KeyRecord(id=row.id, name=row.name, key_hash=row.key_hash, scopes=tuple(row.scopes), models=models,
                     limits=limits, created_at=row.created_at, created_by=row.created_by, revoked_at=row.revoked_at)


class KeyStore:
    def __init__(self, engine: Engine, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.engine = engine
        self.timeout_s = timeout_s  # the longest one call waits for the database before answering 503

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            with conn.execution_options(**{WRITE: True}).begin():
                yield conn
                state = schema.api_keys_state
                conn.execute(update(state).values(generation=state.c.generation + 1))

    @bounded
    def generation(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(schema.api_keys_state.c.generation)).scalar_one()

    @bounded
    def create(self, name: str, scopes: tuple[str, ...], models: tuple[str, ...] | None, limits: KeyLimits,
               actor: str) -> tuple[KeyRecord, str]:
        """A new key: (its record, the secret). The secret is returned here once and stored only as a hash."""
        secret = new_secret()
        values = dict(
            id=new_key_id(), name=name, key_hash=hash_key(secret), scopes=list(scopes),
            models=list(models) if models is not None else None, requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute, max_concurrent=limits.max_concurrent,
            created_at=utcnow(), created_by=actor, revoked_at=None,
        )
        with self._write() as conn:
            conn.execute(insert(schema.api_keys).values(**values))
            return self._get(conn, values["id"]), secret

    @bounded
    def list(self, include_revoked: bool = True) -> list[KeyRecord]:
        """Every key, oldest first (revoked ones too, for the record, unless include_revoked is False)."""
        k = schema.api_keys
        query = select(k).order_by(k.c.created_at, k.c.id)
        if not include_revoked:
            query = query.where(k.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query).all()]

    @bounded
    def get(self, key_id: str) -> KeyRecord:
        with self.engine.connect() as conn:
            return self._get(conn, key_id)

    @bounded
    def revoke(self, key_id: str) -> KeyRecord:
        """Mark the key revoked (kept for the record); revoking twice keeps the first time."""
        k = schema.api_keys
        with self._write() as conn:
            self._get(conn, key_id)
            conn.execute(update(k).where(k.c.id == key_id, k.c.revoked_at.is_(None)).values(revoked_at=utcnow()))
            return self._get(conn, key_id)

    @staticmethod
    def _get(conn: Connection, key_id: str) -> KeyRecord:
        row = conn.execute(select(schema.api_keys).where(schema.api_keys.c.id == key_id)).first()
        if row is None:
            raise NotFoundError(f"No API key with id `{key_id}`.", param="id", code="key_not_found")
        return _record(row)
