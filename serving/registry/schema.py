"""The registry's tables (as this release reads them) and the ordered migrations that build them.

A database records its version in `schema_version`; `migrate` applies the missing steps in one transaction, so a
later release opens an older file and a crash mid-migration leaves the old version intact. A step, once released,
never changes: it carries its own frozen table definitions. To change the schema, append a step and update the
runtime tables below to match (tests/unit/test_registry_store.py checks that they agree).
"""
from __future__ import annotations

from typing import Callable

from sqlalchemy import (
    JSON, Boolean, Column, DateTime, Float, ForeignKey, Integer, MetaData, String, Table, Text, inspect, insert, select,
    text, update,
)
from sqlalchemy.engine import Connection


class SchemaError(RuntimeError):
    """The database cannot be used by this release (e.g. it was written by a newer one)."""


def _model_tables(metadata: MetaData) -> None:
    """The tables as version 1 made them, and (today) as the code reads them. Frozen: when a later step changes a
    table, the runtime tables below get their own definition and this one stays as it is."""
    Table(
        "models", metadata,
        Column("name", String(128), primary_key=True),
        Column("task", String(16), nullable=False),
        Column("source", Text, nullable=False),
        Column("revision", String(256)),
        Column("dtype", String(16), nullable=False),
        Column("device", String(16), nullable=False),
        Column("num_replicas", Integer, nullable=False),
        Column("max_ongoing_requests", Integer, nullable=False),
        Column("torch_threads", Integer),
        Column("num_cpus", Float, nullable=False),
        Column("num_gpus", Float, nullable=False),
        Column("max_batch_size", Integer, nullable=False),
        Column("batch_wait_timeout_s", Float, nullable=False),
        Column("autoscaling", JSON),
        Column("options", JSON, nullable=False),
        Column("description", Text),
        Column("deployed", Boolean, nullable=False),  # desired state: serve it
        Column("status", String(16), nullable=False),  # actual state, written by the controller
        Column("error", Text),
        Column("version", Integer, nullable=False),  # +1 on every change of the model's configuration
        Column("created_at", DateTime, nullable=False),  # UTC
        Column("updated_at", DateTime, nullable=False),
        Column("status_at", DateTime, nullable=False),
        Column("created_by", String(256), nullable=False),
        Column("updated_by", String(256), nullable=False),
    )
    # Names and aliases share one key, so the database itself keeps every `model` id unique.
    Table(
        "model_names", metadata,
        Column("name", String(128), primary_key=True),
        Column("model", String(128), ForeignKey("models.name", ondelete="CASCADE"), nullable=False, index=True),
    )
    Table(
        "registry_state", metadata,
        Column("id", Integer, primary_key=True),
        Column("generation", Integer, nullable=False),  # +1 on every write: readers reload only when it moved
        Column("seeded_at", DateTime),  # when the YAML models first seeded the registry
    )


def _v1(conn: Connection) -> None:
    frozen = MetaData()
    _model_tables(frozen)
    frozen.create_all(conn)
    conn.execute(insert(frozen.tables["registry_state"]).values(id=1, generation=0, seeded_at=None))


def _key_tables(metadata: MetaData) -> None:
    """API keys as version 2 made them (frozen, like _model_tables). The secret itself is never stored."""
    Table(
        "api_keys", metadata,
        Column("id", String(32), primary_key=True),  # public handle: key_<hex>
        Column("name", String(128), nullable=False),
        Column("key_hash", String(80), nullable=False, unique=True),  # sha256:<hex> of the secret
        Column("scopes", JSON, nullable=False),  # ["inference"], ["admin"] or both
        Column("models", JSON),  # allow-list of model names; null: every model
        Column("requests_per_minute", Integer),
        Column("tokens_per_minute", Integer),
        Column("max_concurrent", Integer),
        Column("created_at", DateTime, nullable=False),  # UTC
        Column("created_by", String(256), nullable=False),
        Column("revoked_at", DateTime),  # set once; a revoked key never works again
    )
    Table(
        "api_keys_state", metadata,
        Column("id", Integer, primary_key=True),
        Column("generation", Integer, nullable=False),  # +1 on every key write: ingresses reload when it moved
    )


def _v2(conn: Connection) -> None:
    frozen = MetaData()
    _key_tables(frozen)
    frozen.create_all(conn)
    conn.execute(insert(frozen.tables["api_keys_state"]).values(id=1, generation=0))


def _add_columns(conn: Connection, columns: list[Column]) -> None:
    for column in columns:
        conn.execute(text(f"ALTER TABLE models ADD COLUMN {column.name} {column.type.compile(dialect=conn.dialect)}"))


def _bounds_columns() -> list[Column]:
    return [Column("max_queued_requests", Integer), Column("queue_timeout_s", Float), Column("request_timeout_s", Float)]


def _v3(conn: Connection) -> None:
    """Each model's queue bound and deadlines (NULL: derived from its capacity, or the server's defaults)."""
    _add_columns(conn, _bounds_columns())


def _upstream_columns() -> list[Column]:
    return [Column("upstream", JSON), Column("fallbacks", JSON)]


def _v4(conn: Connection) -> None:
    """Upstream models (the remote server's settings; NULL: a local model) and every model's fallbacks."""
    _add_columns(conn, _upstream_columns())


def _v5(conn: Connection) -> None:
    """Ray custom resources per replica ({} or NULL: none), for placement on nodes that have them."""
    _add_columns(conn, [_custom_resources_column()])


def _custom_resources_column() -> Column:
    return Column("custom_resources", JSON)


def _v6(conn: Connection) -> None:
    """The colocation group a model's replica process is shared with (NULL: a process of its own)."""
    _add_columns(conn, [_colocate_column()])


def _colocate_column() -> Column:
    return Column("colocate", String(64))


Migration = Callable[[Connection], None]
MIGRATIONS: list[Migration] = [_v1, _v2, _v3, _v4, _v5, _v6]  # MIGRATIONS[i] takes a database from version i to i + 1

# The tables as this release reads and writes them (today: version 6).
metadata = MetaData()
_model_tables(metadata)
_key_tables(metadata)
for _column in _bounds_columns() + _upstream_columns():
    metadata.tables["models"].append_column(_column)
models = metadata.tables["models"]
models.append_column(_custom_resources_column())
models.append_column(_colocate_column())
model_names = metadata.tables["model_names"]
registry_state = metadata.tables["registry_state"]
api_keys = metadata.tables["api_keys"]
api_keys_state = metadata.tables["api_keys_state"]
schema_version = Table("schema_version", MetaData(), Column("version", Integer, nullable=False))


def database_version(conn: Connection) -> int:
    """0 for an empty database, else the version it records."""
    if not inspect(conn).has_table("schema_version"):
        return 0
    return int(conn.execute(select(schema_version.c.version)).scalar_one_or_none() or 0)


def migrate(conn: Connection, migrations: list[Migration] = MIGRATIONS) -> int:
    """Bring the database (inside the caller's transaction) to the latest version; returns it."""
    latest = len(migrations)
    version = database_version(conn)
    if version > latest:
        raise SchemaError(
            f"the registry database has schema version {version}, newer than this release supports ({latest}); "
            "upgrade openserve or point server.registry_url at another database"
        )
    if version == latest:
        return version
    if version == 0:
        schema_version.create(conn, checkfirst=True)
        conn.execute(insert(schema_version).values(version=0))
    for step in range(version, latest):
        migrations[step](conn)
        conn.execute(update(schema_version).values(version=step + 1))
    return latest
