"""The versioned schema: a later release opens an older file; a newer file is refused; a failed step rolls back."""
import sqlite3

import pytest
from sqlalchemy import text

from serving.config import ModelConfig
from serving.registry import schema
from serving.registry.schema import SchemaError, database_version, migrate
from serving.registry.store import RegistryStore, create_registry_engine


def test_a_new_database_gets_the_latest_version(tmp_path):
    store = RegistryStore.open(f"sqlite:///{tmp_path}/r.db")
    with store.engine.connect() as conn:
        assert database_version(conn) == len(schema.MIGRATIONS)
    store.close()
    RegistryStore.open(f"sqlite:///{tmp_path}/r.db").close()  # opening again migrates nothing


def _next_adds_owner(conn):
    conn.execute(text("ALTER TABLE models ADD COLUMN owner VARCHAR(64) NOT NULL DEFAULT 'nobody'"))


def test_an_older_file_is_upgraded_in_place_keeping_its_rows(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    old = RegistryStore.open(url)  # written by "this release"
    old.create(ModelConfig(name="m", task="chat", source="fake:", aliases=["x"]), deployed=True, actor="a")
    old.close()
    engine = create_registry_engine(url)
    latest = len(schema.MIGRATIONS) + 1
    with engine.begin() as conn:  # "the next release" adds a step
        assert migrate(conn, [*schema.MIGRATIONS, _next_adds_owner]) == latest
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, owner FROM models")).all() == [("m", "nobody")]
        assert database_version(conn) == latest
    engine.dispose()


def test_a_version_1_file_gets_the_key_tables_and_keeps_its_models(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    engine = create_registry_engine(url)
    with engine.begin() as conn:  # a registry written before API keys existed
        assert migrate(conn, schema.MIGRATIONS[:1]) == 1
    engine.dispose()
    store = RegistryStore.open(url)
    store.create(ModelConfig(name="m", task="chat", source="fake:"), deployed=False, actor="a")
    with store.engine.connect() as conn:
        assert database_version(conn) == len(schema.MIGRATIONS)
        assert conn.execute(text("SELECT count(*) FROM api_keys")).scalar_one() == 0
        assert conn.execute(text("SELECT generation FROM api_keys_state")).scalar_one() == 0
    store.close()


def test_a_newer_file_is_refused_with_a_clear_error(tmp_path):
    db = tmp_path / "r.db"
    RegistryStore.open(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaError, match="schema version 99, newer than this release supports"):
        RegistryStore.open(f"sqlite:///{db}")


def test_a_failing_step_leaves_the_old_version_intact(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    RegistryStore.open(url).close()

    def broken(conn):
        conn.execute(text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("crash in the middle of a migration")

    engine = create_registry_engine(url)
    with pytest.raises(RuntimeError, match="crash"):
        with engine.begin() as conn:
            migrate(conn, [*schema.MIGRATIONS, broken])
    with engine.connect() as conn:
        assert database_version(conn) == len(schema.MIGRATIONS)
        assert not conn.execute(text("SELECT name FROM sqlite_master WHERE name = 'half_done'")).all()
    engine.dispose()


def _file_at(tmp_path, version: int, task: str) -> str:
    """A registry file as release `version` left it, holding one model `m` of `task`; returns its URL."""
    url = f"sqlite:///{tmp_path}/r.db"
    engine = create_registry_engine(url)
    with engine.begin() as conn:  # max_ongoing_requests is NOT NULL before the bounds (version 3)
        migrate(conn, schema.MIGRATIONS[:version])
        conn.execute(text(
            "INSERT INTO models (name, task, source, dtype, device, num_replicas, max_ongoing_requests, num_cpus, "
            "num_gpus, max_batch_size, batch_wait_timeout_s, options, deployed, status, version, created_at, "
            f"updated_at, status_at, created_by, updated_by) VALUES ('m', '{task}', 'fake:', 'auto', 'auto', 1, "
            "64, 0.5, 0, 8, 0.01, '{}', 1, 'ready', 1, '2026-01-01', '2026-01-01', '2026-01-01', 'a', 'a')"
        ))
        conn.execute(text("INSERT INTO model_names (name, model) VALUES ('m', 'm')"))
    engine.dispose()
    return url


def test_a_file_from_before_the_bounds_gets_their_columns_and_its_models_keep_their_values(tmp_path):
    store = RegistryStore.open(_file_at(tmp_path, 2, "embedding"))
    spec = store.get("m").spec
    assert (spec.max_ongoing_requests, spec.max_queued_requests, spec.queue_timeout_s) == (64, None, None)
    bounded = spec.model_copy(update={"max_ongoing_requests": None, "max_queued_requests": 5, "request_timeout_s": 9.5})
    assert store.update(bounded, actor="b").spec == bounded  # None (derived) survives the NOT NULL column
    store.close()


def test_a_file_from_before_upstreams_gains_upstream_and_fallbacks_and_its_models_read_as_local(tmp_path):
    store = RegistryStore.open(_file_at(tmp_path, 3, "chat"))
    entry = store.get("m")
    assert (entry.spec.upstream, entry.spec.fallbacks, entry.spec.source) == (None, [], "fake:")
    upstream = ModelConfig(name="u", task="chat", upstream={"base_url": "http://remote:8000/v1", "model": "big"},
                           fallbacks=["m"])
    store.create(upstream, deployed=True, actor="a")
    assert store.get("u").spec == upstream
    store.close()


def test_a_file_from_before_custom_resources_gets_them_and_keeps_its_models(tmp_path):
    store = RegistryStore.open(_file_at(tmp_path, 4, "chat"))
    assert store.get("m").spec.resources.custom == {} and store.get("m").spec.resources.num_cpus == 0.5
    changed = {**store.get("m").spec.model_dump(), "resources": {"num_cpus": 0.1, "custom": {"special": 1}}}
    store.update(ModelConfig.model_validate(changed), actor="b")
    assert store.get("m").spec.resources.custom == {"special": 1.0}
    store.close()


def test_a_file_from_before_colocation_gets_the_column_and_its_models_keep_a_process_of_their_own(tmp_path):
    store = RegistryStore.open(_file_at(tmp_path, 5, "embedding"))
    assert store.get("m").spec.colocate is None and store.get("m").spec.deployment_name == "model:m"
    store.update(store.get("m").spec.model_copy(update={"colocate": "small"}), actor="b")
    assert store.get("m").spec.colocate == "small" and store.get("m").spec.deployment_name == "group:small"
    store.close()
