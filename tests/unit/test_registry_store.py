"""RegistryStore on a real SQLite file: entries, aliases, statuses, seeding, persistence and concurrency."""
import sqlite3
import threading

import pytest
from sqlalchemy import inspect

from serving.config import ModelConfig
from serving.errors import ConflictError, ModelNotFoundError
from serving.registry import schema
from serving.registry.store import RegistryStore


def spec(name: str, **kw) -> ModelConfig:
    return ModelConfig.model_validate({"name": name, "task": "embedding", "source": "fake:", **kw})


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "data" / "registry.db")


@pytest.fixture
def store(db):
    s = RegistryStore.open(f"sqlite:///{db}")
    yield s
    s.close()


def test_create_get_list_round_trip_every_field(store):
    full = spec(
        "org/m", task="chat", revision=None, dtype="bfloat16", device="cpu", num_replicas=2, max_ongoing_requests=7,
        max_queued_requests=11, queue_timeout_s=2.5, request_timeout_s=30.0, torch_threads=3, batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.2},
        resources={"num_cpus": 1.5, "num_gpus": 0.25}, autoscaling={"min_replicas": 0, "max_replicas": 3},
        options={"max_model_len": 128, "nested": [1, 2]}, description="d", aliases=["a1", "a2"],
    )
    created = store.create(full, deployed=True, actor="alice")
    assert created.spec == full
    assert (created.status, created.deployed, created.version, created.created_by) == ("deploying", True, 1, "alice")
    assert store.get("org/m") == created
    assert [e.name for e in store.list()] == ["org/m"]


def test_registered_only_when_not_deployed(store):
    assert store.create(spec("m"), deployed=False, actor="a").status == "registered"


@pytest.mark.parametrize(
    "first, second, message",
    [
        (spec("m"), spec("m"), "`m` is already a model"),
        (spec("m", aliases=["x"]), spec("x"), "`x` is already an alias of `m`"),
        (spec("m"), spec("n", aliases=["m"]), "`m` is already a model"),
        (spec("m", aliases=["x"]), spec("n", aliases=["x"]), "already an alias of `m`"),
    ],
)
def test_names_and_aliases_share_one_namespace(store, first, second, message):
    store.create(first, deployed=False, actor="a")
    with pytest.raises(ConflictError, match=message):
        store.create(second, deployed=False, actor="a")
    assert [e.name for e in store.list()] == [first.name]


def test_update_replaces_config_and_aliases_and_bumps_version(store):
    store.create(spec("m", aliases=["old"]), deployed=True, actor="a")
    updated = store.update(spec("m", aliases=["new"], batching={"max_batch_size": 2}), actor="bob")
    assert (updated.version, updated.updated_by, updated.spec.aliases) == (2, "bob", ["new"])
    assert updated.spec.batching.max_batch_size == 2 and updated.status == "deploying"
    store.create(spec("old"), deployed=False, actor="a")  # the old alias is free again
    assert store.update(spec("m"), actor="c", status="updating").status == "updating"


def test_update_and_delete_of_unknown_model_are_404(store):
    with pytest.raises(ModelNotFoundError):
        store.update(spec("nope"), actor="a")
    with pytest.raises(ModelNotFoundError):
        store.delete("nope")


def test_set_status_only_for_the_expected_version_and_desire(store):
    store.create(spec("m"), deployed=True, actor="a")
    assert store.set_status("m", "ready", version=1, deployed=True)
    assert not store.set_status("m", "failed", "x", version=2)
    store.set_deployed("m", False, actor="a")
    assert not store.set_status("m", "ready", version=1, deployed=True)
    entry = store.get("m")
    assert (entry.status, entry.deployed) == ("stopping", False)


def test_delete_frees_the_name_and_aliases(store):
    store.create(spec("m", aliases=["x"]), deployed=True, actor="a")
    assert store.delete("m") == "m"
    store.create(spec("x", aliases=["m"]), deployed=True, actor="a")


def test_generation_moves_on_writes_only(store):
    g0 = store.generation()
    store.create(spec("m"), deployed=True, actor="a")
    store.list(), store.get("m")
    g1 = store.generation()
    store.set_status("m", "ready")
    assert g0 < g1 < store.generation()


def test_seed_once_then_only_with_replace(store):
    assert store.seed([spec("a"), spec("b")], actor="config:x.yaml") == ["a", "b"]
    store.delete("b")
    assert store.seed([spec("a", batching={"max_batch_size": 3}), spec("b")], actor="config:x.yaml") == []
    assert [e.name for e in store.list()] == ["a"]  # a deleted model does not come back
    assert store.seed([spec("a", batching={"max_batch_size": 3})], actor="config:y.yaml", replace=True) == ["a"]
    a = store.get("a")
    assert (a.spec.batching.max_batch_size, a.version, a.updated_by, a.deployed) == (3, 2, "config:y.yaml", True)


def test_reset_runtime_statuses(store):
    for name, deployed, status in [("r", True, "ready"), ("f", True, "failed"), ("s", False, "stopping"),
                                   ("g", False, "registered")]:
        store.create(spec(name), deployed=deployed, actor="a")
        store.set_status(name, status, "boom" if status == "failed" else None)
    store.reset_runtime_statuses()
    assert {e.name: (e.status, e.error) for e in store.list()} == {
        "r": ("deploying", None), "f": ("deploying", None), "s": ("stopped", None), "g": ("registered", None),
    }


def test_persists_across_reopen_in_wal_mode(db, store):
    store.create(spec("m", aliases=["x"]), deployed=True, actor="a")
    store.close()
    again = RegistryStore.open(f"sqlite:///{db}")
    assert again.get("m").spec.aliases == ["x"]
    again.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_concurrent_writers_leave_a_consistent_registry(db, store):
    """20 threads, each with its own store (as separate processes would), 5 pairs fighting over a name."""
    names = [f"m{i % 15}" for i in range(20)]
    outcomes: list[str] = []

    def register(i: int) -> None:
        own = RegistryStore.open(f"sqlite:///{db}")
        try:
            own.create(spec(names[i], aliases=[f"alias-{i}"]), deployed=False, actor=f"t{i}")
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")
        finally:
            own.close()

    threads = [threading.Thread(target=register, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes).count("ok") == 15 and outcomes.count("conflict") == 5
    entries = store.list()
    assert sorted(e.name for e in entries) == sorted(set(names))
    assert all(len(e.spec.aliases) == 1 for e in entries)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count(*) FROM model_names").fetchone()[0]
    assert rows == 30  # each winner's name and its one alias, nothing from the losers


def test_runtime_tables_match_the_migrated_database(store):
    inspector = inspect(store.engine)
    for table in schema.metadata.tables.values():
        assert {c["name"] for c in inspector.get_columns(table.name)} == {c.name for c in table.columns}
