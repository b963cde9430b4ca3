"""RegistryStore: the registry's SQL database (SQLite by default, any SQLAlchemy URL), one transaction per call.

Thread-safe and synchronous; async callers use asyncio.to_thread. Every write bumps `registry_state.generation`,
so readers (the ingress' routes) reload only when something changed. Every call is bounded (serving/registry/
database.py): a locked or unreachable database is a RegistryUnavailableError (503) within `timeout_s`. A row this
release cannot read is reported (InvalidEntry, logged once) and the others are still served.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

from pydantic import ValidationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from serving.config import ModelConfig
from serving.errors import ConflictError, ModelNotFoundError, RegistryEntryInvalidError
from serving.registry import schema
from serving.registry.database import DEFAULT_TIMEOUT_S, WRITE, bounded, create_registry_engine
from serving.registry.entry import ModelEntry, utcnow

__all__ = ["InvalidEntry", "RegistryListing", "RegistryStore", "create_registry_engine"]

log = logging.getLogger("serving.registry")

_SPEC_COLUMNS = (
    "task", "source", "revision", "dtype", "device", "num_replicas", "torch_threads", "options", "description",
    "max_queued_requests", "queue_timeout_s", "request_timeout_s", "colocate",
)


@dataclass(frozen=True)
class InvalidEntry:
    """A row this release cannot read (edited by hand, written by another release, damaged): its name and why."""

    name: str
    error: str


@dataclass(frozen=True)
class RegistryListing:
    entries: list[ModelEntry]  # the readable entries, by name
    invalid: list[InvalidEntry]  # the others, by name


def _row_values(spec: ModelConfig) -> dict:
    values = {c: getattr(spec, c) for c in _SPEC_COLUMNS}
    values.update(
        max_ongoing_requests=spec.max_ongoing_requests or 0,  # version 1's column is NOT NULL: 0 means derived
        num_cpus=spec.resources.num_cpus,
        num_gpus=spec.resources.num_gpus,
        custom_resources=spec.resources.custom or None,
        max_batch_size=spec.batching.max_batch_size,
        batch_wait_timeout_s=spec.batching.batch_wait_timeout_s,
        autoscaling=spec.autoscaling.model_dump() if spec.autoscaling else None,
        upstream=spec.upstream.model_dump() if spec.upstream else None,
        fallbacks=list(spec.fallbacks),
    )
    return values


def _entry(row, aliases: list[str]) -> ModelEntry:
    data = {c: getattr(row, c) for c in _SPEC_COLUMNS}
    data.update(
        max_ongoing_requests=row.max_ongoing_requests or None,
        name=row.name,
        resources={"num_cpus": row.num_cpus, "num_gpus": row.num_gpus, "custom": row.custom_resources or {}},
        batching={"max_batch_size": row.max_batch_size, "batch_wait_timeout_s": row.batch_wait_timeout_s},
        autoscaling=row.autoscaling,
        aliases=aliases,
        upstream=row.upstream,
        fallbacks=row.fallbacks or [],
    )
    return ModelEntry(
        spec=ModelConfig.model_validate(data),
        deployed=bool(row.deployed),
        status=row.status,
        error=row.error,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        status_at=row.status_at,
        created_by=row.created_by,
        updated_by=row.updated_by,
    )


class RegistryStore:
    def __init__(self, engine: Engine, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.engine = engine
        self.timeout_s = timeout_s  # the longest one call waits for the database before answering 503
        self._reported: set[InvalidEntry] = set()  # unreadable rows already logged

    @classmethod
    def open(cls, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> RegistryStore:
        """Connect to `url` and migrate its schema to this release's version."""
        store = cls(create_registry_engine(url, timeout_s), timeout_s)
        store._migrate()
        return store

    def close(self) -> None:
        self.engine.dispose()

    @bounded
    def _migrate(self) -> None:
        with self._transaction() as conn:
            schema.migrate(conn)

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if write:
                conn = conn.execution_options(**{WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction that bumps the generation; a unique-key clash becomes a ConflictError."""
        try:
            with self._transaction() as conn:
                yield conn
                conn.execute(update(schema.registry_state).values(generation=schema.registry_state.c.generation + 1))
        except IntegrityError as e:
            raise ConflictError(f"a model name or alias is already taken ({e.orig})", code="model_exists") from None

    # --- reads -------------------------------------------------------------------------------------------------

    @bounded
    def generation(self) -> int:
        with self._transaction(write=False) as conn:
            return conn.execute(select(schema.registry_state.c.generation)).scalar_one()

    @bounded
    def list(self) -> list[ModelEntry]:
        """Every readable entry, by name (a row that cannot be read is logged and left out: see `listing`)."""
        with self._transaction(write=False) as conn:
            return self._scan(conn).entries

    @bounded
    def listing(self) -> RegistryListing:
        """Every entry, by name: the readable ones, and the rows that cannot be read with the reason."""
        with self._transaction(write=False) as conn:
            return self._scan(conn)

    @bounded
    def get(self, name: str) -> ModelEntry:
        """The entry named `name` (not an alias); ModelNotFoundError if none, RegistryEntryInvalidError if its row
        cannot be read."""
        with self._transaction(write=False) as conn:
            return self._get(conn, name)

    def _scan(self, conn: Connection, name: str | None = None) -> RegistryListing:
        m, n = schema.models, schema.model_names
        aliases: dict[str, list[str]] = {}
        for alias, model in sorted(conn.execute(select(n).where(n.c.model == name) if name else select(n)).all()):
            if alias != model:
                aliases.setdefault(model, []).append(alias)
        only = (m.c.name == name,) if name else ()
        try:
            rows = conn.execute(select(m).where(*only).order_by(m.c.name)).all()
            reads = [(row.name, lambda row=row: _entry(row, aliases.get(row.name, []))) for row in rows]
        except (ValueError, TypeError):  # a value its column type cannot decode (bad JSON, a bad date): row by row
            names = conn.execute(select(m.c.name).where(*only).order_by(m.c.name)).scalars().all()
            reads = [(key, lambda key=key: _entry(conn.execute(select(m).where(m.c.name == key)).one(),
                                                  aliases.get(key, []))) for key in names]
        entries, invalid = [], []
        for key, read in reads:
            try:
                entries.append(read())
            except (ValueError, TypeError, KeyError) as e:  # pydantic's ValidationError is a ValueError
                invalid.append(self._invalid(key, e))
        return RegistryListing(entries, invalid)

    def _invalid(self, name: str, error: Exception) -> InvalidEntry:
        """The report of an unreadable row, logged the first time it is seen."""
        if isinstance(error, ValidationError):
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            reason = f"{where}: {first['msg']}" if where else first["msg"]
        else:
            reason = f"{type(error).__name__}: {error}"
        found = InvalidEntry(name, reason[:500])
        if found not in self._reported:
            self._reported.add(found)
            log.error("registry entry %s cannot be read, it is left out: %s", name, found.error)
        return found

    def _get(self, conn: Connection, name: str) -> ModelEntry:
        found = self._scan(conn, name)
        if found.invalid:
            raise RegistryEntryInvalidError(
                f"The registry entry `{name}` cannot be read ({found.invalid[0].error}); delete it and register "
                "the model again.", param="name", code="registry_entry_invalid",
            )
        if not found.entries:
            raise ModelNotFoundError(f"The model `{name}` is not in the registry.", param="name")
        return found.entries[0]

    # --- writes ------------------------------------------------------------------------------------------------

    @bounded
    def create(self, spec: ModelConfig, *, deployed: bool, actor: str) -> ModelEntry:
        """Add a model; ConflictError when its name or an alias is taken."""
        with self._write() as conn:
            self._insert(conn, spec, deployed=deployed, actor=actor)
            return self._get(conn, spec.name)

    @bounded
    def update(self, spec: ModelConfig, *, actor: str, status: str | None = None) -> ModelEntry:
        """Replace the configuration of the model `spec.name` (its version goes up by one); `status`, if given,
        replaces the status too (and clears the error)."""
        state = {} if status is None else {"status": status, "error": None}
        with self._write() as conn:
            self._replace(conn, spec, self._get(conn, spec.name).version, actor=actor, **state)
            return self._get(conn, spec.name)

    @bounded
    def set_deployed(self, name: str, deployed: bool, *, actor: str) -> ModelEntry:
        """Record what the operator wants; the status becomes deploying or stopping until the controller acts."""
        m = schema.models
        with self._write() as conn:
            self._get(conn, name)
            status = "deploying" if deployed else "stopping"
            now = utcnow()
            conn.execute(
                update(m).where(m.c.name == name).values(
                    deployed=deployed, status=status, error=None, status_at=now, updated_at=now, updated_by=actor
                )
            )
            return self._get(conn, name)

    @bounded
    def set_status(
        self, name: str, status: str, error: str | None = None, *, version: int | None = None,
        deployed: bool | None = None,
    ) -> bool:
        """The controller's report. With `version` / `deployed`, only if the entry still has them (else False)."""
        m = schema.models
        where = [m.c.name == name]
        if version is not None:
            where.append(m.c.version == version)
        if deployed is not None:
            where.append(m.c.deployed == deployed)
        with self._write() as conn:
            result = conn.execute(update(m).where(*where).values(status=status, error=error, status_at=utcnow()))
            return result.rowcount == 1

    @bounded
    def delete(self, name: str) -> str:
        """Remove the model (readable or not) and its aliases; returns its name. ModelNotFoundError if none."""
        m = schema.models
        with self._write() as conn:
            if conn.execute(select(m.c.name).where(m.c.name == name)).first() is None:
                raise ModelNotFoundError(f"The model `{name}` is not in the registry.", param="name")
            conn.execute(delete(schema.model_names).where(schema.model_names.c.model == name))
            conn.execute(delete(m).where(m.c.name == name))
            return name

    @bounded
    def reset_runtime_statuses(self) -> None:
        """At server start nothing is deployed yet: wanted models are `deploying`, the others at rest."""
        m = schema.models
        with self._write() as conn:
            now = utcnow()
            conn.execute(update(m).where(m.c.deployed.is_(True)).values(status="deploying", error=None, status_at=now))
            moving = m.c.status.in_(("deploying", "ready", "updating", "stopping"))
            conn.execute(update(m).where(m.c.deployed.is_(False), moving).values(status="stopped", status_at=now))

    @bounded
    def seed(self, specs: Iterable[ModelConfig], *, actor: str, replace: bool = False) -> list[str]:
        """Add the configuration's models, once: on the registry's first start, or every time with replace=True
        (then they overwrite same-named entries and are marked deployed). Returns the names written."""
        state = schema.registry_state
        written = []
        with self._write() as conn:
            seeded_at = conn.execute(select(state.c.seeded_at)).scalar_one()
            if seeded_at is not None and not replace:
                return []
            for spec in specs:
                written.append(self._seed_one(conn, spec, actor))
            conn.execute(update(state).values(seeded_at=utcnow()))
        return written

    def _seed_one(self, conn: Connection, spec: ModelConfig, actor: str) -> str:
        m = schema.models
        version = conn.execute(select(m.c.version).where(m.c.name == spec.name)).scalar_one_or_none()
        if version is None:
            self._insert(conn, spec, deployed=True, actor=actor)
        else:
            self._replace(conn, spec, version, actor=actor, deployed=True, status="deploying", error=None)
        return spec.name

    def _insert(self, conn: Connection, spec: ModelConfig, *, deployed: bool, actor: str) -> None:
        self._check_names_free(conn, spec, owner=None)
        now = utcnow()
        conn.execute(
            insert(schema.models).values(
                name=spec.name, **_row_values(spec), deployed=deployed,
                status="deploying" if deployed else "registered", error=None, version=1,
                created_at=now, updated_at=now, status_at=now, created_by=actor, updated_by=actor,
            )
        )
        self._insert_names(conn, spec.name, [spec.name, *spec.aliases])

    def _replace(self, conn: Connection, spec: ModelConfig, version: int, *, actor: str, **state) -> None:
        """Overwrite a model's configuration (and, if given, its state columns); version + 1."""
        m, n = schema.models, schema.model_names
        self._check_names_free(conn, spec, owner=spec.name)
        now = utcnow()
        if state:
            state["status_at"] = now
        conn.execute(
            update(m).where(m.c.name == spec.name).values(
                **_row_values(spec), **state, version=version + 1, updated_at=now, updated_by=actor
            )
        )
        conn.execute(delete(n).where(n.c.model == spec.name, n.c.name != spec.name))
        self._insert_names(conn, spec.name, spec.aliases)

    @staticmethod
    def _check_names_free(conn: Connection, spec: ModelConfig, owner: str | None) -> None:
        """A clear 409 (naming the clash) before the key constraint, the backstop under concurrency, would fire.
        owner: the model whose own names do not count (an update), or None (a new model)."""
        n = schema.model_names
        query = select(n).where(n.c.name.in_([spec.name, *spec.aliases]))
        if owner is not None:
            query = query.where(n.c.model != owner)
        taken = conn.execute(query).first()
        if taken is not None:
            what = "a model" if taken.name == taken.model else f"an alias of `{taken.model}`"
            param = "name" if taken.name == spec.name else "aliases"
            raise ConflictError(f"`{taken.name}` is already {what}.", param=param, code="model_exists")

    @staticmethod
    def _insert_names(conn: Connection, model: str, names: list[str]) -> None:
        if names:
            conn.execute(insert(schema.model_names), [{"name": name, "model": model} for name in names])
