"""RegistryStore under faults, on real SQLite files: a locked database answers RegistryUnavailableError within the
store's bound (retried meanwhile), a damaged file at once, and a row that cannot be read is reported, not fatal."""
import logging
import sqlite3
import threading
import time

import pytest
from sqlalchemy import event

from serving.config import ModelConfig
from serving.errors import ModelNotFoundError, RegistryEntryInvalidError, RegistryUnavailableError
from serving.registry import database
from serving.registry.store import InvalidEntry, RegistryStore

BOUND_S = 0.5  # the stores' timeout_s here: short, so that the tests are
SLACK_S = 5.0  # what a loaded 2-core machine may add to it; 30 s (SQLite's usual wait) is far beyond


def spec(name: str, **kw) -> ModelConfig:
    return ModelConfig.model_validate({"name": name, "task": "embedding", "source": "fake:", **kw})


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "registry.db")


@pytest.fixture
def store(db):
    s = RegistryStore.open(f"sqlite:///{db}", timeout_s=BOUND_S)
    s.create(spec("a"), deployed=False, actor="t")
    s.create(spec("b", aliases=["bee"]), deployed=False, actor="t")
    yield s
    s.close()


@pytest.fixture
def locked(db, store):
    """A second connection (another process, as far as SQLite knows) holding the write lock."""
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    yield holder
    holder.execute("ROLLBACK")
    holder.close()


def on_begin_write(store: RegistryStore, call) -> None:
    """call() each time the store is about to BEGIN a write transaction (each retry begins one)."""
    def before(conn, cursor, statement, *args):
        if statement.startswith("BEGIN IMMEDIATE"):
            call()

    event.listen(store.engine, "before_cursor_execute", before)


def test_a_write_to_a_locked_database_waits_out_the_bound_then_is_unavailable(store, locked):
    begun: list[int] = []
    on_begin_write(store, lambda: begun.append(1))
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError) as e:
        store.create(spec("c"), deployed=False, actor="t")
    waited = time.monotonic() - started
    # SQLite's busy handler retried the lock with backoff for the whole bound (one BEGIN), no longer.
    assert BOUND_S * 0.9 <= waited < BOUND_S + SLACK_S and begun == [1]
    assert e.value.status_code == 503 and e.value.headers() == {"Retry-After": "2"}
    assert e.value.message.startswith("The model registry is unavailable: its database did not answer within 0.5 s")
    assert "database is locked" in e.value.message


def test_reads_go_on_while_a_writer_holds_the_lock(store, locked):
    assert [e.name for e in store.list()] == ["a", "b"]  # WAL: readers never wait for the writer


def test_a_lock_released_within_the_bound_is_waited_for(db):
    store = RegistryStore.open(f"sqlite:///{db}", timeout_s=30)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    begun = threading.Event()
    on_begin_write(store, begun.set)
    outcome: list = []
    writer = threading.Thread(target=lambda: outcome.append(store.create(spec("c"), deployed=False, actor="t")))
    writer.start()
    assert begun.wait(10)  # the writer is at its BEGIN, waiting for the lock
    holder.execute("ROLLBACK")
    writer.join(30)
    assert [e.name for e in outcome] == ["c"]
    holder.close()
    store.close()


def test_a_file_that_is_not_a_database_is_unavailable_at_once(tmp_path):
    path = tmp_path / "registry.db"
    path.write_bytes(b"this is not an SQLite database, just bytes " * 200)
    with pytest.raises(RegistryUnavailableError, match="its database cannot be read .*not a database"):
        RegistryStore.open(f"sqlite:///{path}", timeout_s=30)  # no retries: 30 s would time the test out


def test_an_unopenable_database_is_retried_with_backoff_then_unavailable(tmp_path, monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr(database.time, "sleep", pauses.append)  # the backoff, taken instantly
    clock = iter(range(1000))
    monkeypatch.setattr(database.time, "monotonic", lambda: next(clock) * 0.1)  # each look at the clock: +0.1 s
    (tmp_path / "a-directory.db").mkdir()
    with pytest.raises(RegistryUnavailableError, match="did not answer within 2 s .*unable to open"):
        RegistryStore.open(f"sqlite:///{tmp_path / 'a-directory.db'}", timeout_s=2)
    assert pauses[:4] == [0.05, 0.1, 0.2, 0.4] and max(pauses) == 0.5 and len(pauses) >= 5


@pytest.mark.parametrize("damage, reason", [
    ("options = '{not json'", "JSONDecodeError"),
    ("task = 'video'", "task: Input should be 'chat', 'embedding', 'image' or 'speech'"),
    ("created_at = 'yesterday'", "ValueError"),
    ("num_replicas = -3", "num_replicas: Input should be greater than or equal to 1"),
])
def test_a_row_that_cannot_be_read_is_reported_and_the_others_still_served(db, store, caplog, damage, reason):
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE models SET {damage} WHERE name = 'b'")
    with caplog.at_level(logging.ERROR, logger="serving.registry"):
        assert [e.name for e in store.list()] == ["a"]
        listing = store.listing()
    assert [e.name for e in listing.entries] == ["a"]
    assert [bad.name for bad in listing.invalid] == ["b"] and reason in listing.invalid[0].error
    assert len(caplog.records) == 1 and "registry entry b cannot be read" in caplog.records[0].getMessage()
    with pytest.raises(RegistryEntryInvalidError, match="The registry entry `b` cannot be read") as e:
        store.get("b")
    assert e.value.status_code == 500 and e.value.code == "registry_entry_invalid"
    assert store.get("a").name == "a"
    assert store.delete("b") == "b"  # removable, though unreadable
    assert store.listing().invalid == [] and [e.name for e in store.list()] == ["a"]
    store.create(spec("bee"), deployed=False, actor="t")  # its alias went with it
    with pytest.raises(ModelNotFoundError):
        store.delete("b")


def test_invalid_entries_compare_by_name_and_reason():
    assert InvalidEntry("b", "x") == InvalidEntry("b", "x") != InvalidEntry("b", "y")
