"""RegistryStore: the registry's SQL database (SQLite by default, any SQLAlchemy URL), one transaction per call.

Thread-safe and synchronous; async callers use asyncio.to_thread. Every write bumps `registry_state.generation`,
so readers (the ingress' routes) reload only when something changed.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator

from sqlalchemy import create_engine, delete, event, insert, select, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError

from serving.config import ModelConfig
from serving.errors import ConflictError, ModelNotFoundError
from serving.registry import schema
from serving.registry.entry import ModelEntry, utcnow

_SPEC_COLUMNS = (
    "task", "source", "revision", "dtype", "device", "num_replicas", "max_ongoing_requests", "torch_threads",
    "options", "description",
)
_WRITE = "openserve_registry_write"  # execution option: this connection's transaction writes


def create_registry_engine(url: str) -> Engine:
    """An Engine for `url`; SQLite files get WAL, foreign keys, a busy timeout and writers that lock up front."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # pysqlite must not BEGIN on its own: _sqlite_begin does
    cursor = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=30000"):
        cursor.execute("PRAGMA " + pragma)
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # A deferred transaction that reads and then writes fails at once (SQLITE_BUSY, no waiting) when another
    # writer committed in between; taking the write lock at BEGIN makes writers queue on the busy timeout instead.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _row_values(spec: ModelConfig) -> dict:
    values = {c: getattr(spec, c) for c in _SPEC_COLUMNS}
    values.update(
        num_cpus=spec.resources.num_cpus,
        num_gpus=spec.resources.num_gpus,
        max_batch_size=spec.batching.max_batch_size,
        batch_wait_timeout_s=spec.batching.batch_wait_timeout_s,
        autoscaling=spec.autoscaling.model_dump() if spec.autoscaling else None,
    )
    return values


def _entry(row, aliases: list[str]) -> ModelEntry:
    data = {c: getattr(row, c) for c in _SPEC_COLUMNS}
    data.update(
        name=row.name,
        resources={"num_cpus": row.num_cpus, "num_gpus": row.num_gpus},
        batching={"max_batch_size": row.max_batch_size, "batch_wait_timeout_s": row.batch_wait_timeout_s},
        autoscaling=row.autoscaling,
        aliases=aliases,
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
    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> RegistryStore:
        """Connect to `url` and migrate its schema to this release's version."""
        store = cls(create_registry_engine(url))
        with store._transaction() as conn:
            schema.migrate(conn)
        return store

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if write:
                conn = conn.execution_options(**{_WRITE: True})
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

    def generation(self) -> int:
        with self._transaction(write=False) as conn:
            return conn.execute(select(schema.registry_state.c.generation)).scalar_one()

    def list(self) -> list[ModelEntry]:
        """Every entry, by name."""
        with self._transaction(write=False) as conn:
            return self._select(conn)

    def get(self, name: str) -> ModelEntry:
        """The entry named `name` (not an alias); ModelNotFoundError if none."""
        with self._transaction(write=False) as conn:
            return self._get(conn, name)

    def _select(self, conn: Connection, name: str | None = None) -> list[ModelEntry]:
        m, n = schema.models, schema.model_names
        rows = conn.execute(select(m).where(m.c.name == name) if name else select(m).order_by(m.c.name)).all()
        names = conn.execute(select(n).where(n.c.model == name) if name else select(n)).all()
        aliases: dict[str, list[str]] = {}
        for alias, model in sorted(names):
            if alias != model:
                aliases.setdefault(model, []).append(alias)
        return [_entry(row, aliases.get(row.name, [])) for row in rows]

    def _get(self, conn: Connection, name: str) -> ModelEntry:
        found = self._select(conn, name)
        if not found:
            raise ModelNotFoundError(f"The model `{name}` is not in the registry.", param="name")
        return found[0]

    # --- writes ------------------------------------------------------------------------------------------------

    def create(self, spec: ModelConfig, *, deployed: bool, actor: str) -> ModelEntry:
        """Add a model; ConflictError when its name or an alias is taken."""
        with self._write() as conn:
            self._insert(conn, spec, deployed=deployed, actor=actor)
            return self._get(conn, spec.name)

    def update(self, spec: ModelConfig, *, actor: str, status: str | None = None) -> ModelEntry:
        """Replace the configuration of the model `spec.name` (its version goes up by one); `status`, if given,
        replaces the status too (and clears the error)."""
        state = {} if status is None else {"status": status, "error": None}
        with self._write() as conn:
            self._replace(conn, spec, self._get(conn, spec.name).version, actor=actor, **state)
            return self._get(conn, spec.name)

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

    def delete(self, name: str) -> ModelEntry:
        with self._write() as conn:
            entry = self._get(conn, name)
            conn.execute(delete(schema.model_names).where(schema.model_names.c.model == name))
            conn.execute(delete(schema.models).where(schema.models.c.name == name))
            return entry

    def reset_runtime_statuses(self) -> None:
        """At server start nothing is deployed yet: wanted models are `deploying`, the others at rest."""
        m = schema.models
        with self._write() as conn:
            now = utcnow()
            conn.execute(update(m).where(m.c.deployed.is_(True)).values(status="deploying", error=None, status_at=now))
            moving = m.c.status.in_(("deploying", "ready", "updating", "stopping"))
            conn.execute(update(m).where(m.c.deployed.is_(False), moving).values(status="stopped", status_at=now))

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
