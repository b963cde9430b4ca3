"""The registry's database connection, and a bound on every call: a locked, unreachable or unreadable database
answers RegistryUnavailableError (503 with Retry-After) within `timeout_s`, retried with backoff meanwhile.

A request (an admin call, an ingress reloading its routes) can wait a few seconds for the registry, not the 30 s
SQLite's usual busy timeout would hold it; past that the caller is told to retry, and nothing half-done remains
(each call is one transaction).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from typing import Callable, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from serving.errors import RegistryUnavailableError

log = logging.getLogger("serving.registry")

DEFAULT_TIMEOUT_S = 5.0  # the longest a registry call waits (locks, reconnects) before answering 503
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.05, 0.5
WRITE = "openserve_registry_write"  # execution option: this connection's transaction writes
T = TypeVar("T")

_attempt = threading.local()  # .deadline: when the current attempt of this thread's call must give up


def create_registry_engine(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Engine:
    """An Engine for `url`; SQLite files get WAL, foreign keys and writers that lock up front. Waits for a pooled
    connection or a server's answer to connect are bounded by `timeout_s` too."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend != "sqlite":
        # libpq, pymysql and mysqlclient all take connect_timeout (whole seconds); other drivers keep their own.
        connect_args = {"connect_timeout": max(2, math.ceil(timeout_s))} if backend in (
            "postgresql", "mysql", "mariadb") else {}
        return create_engine(url, pool_pre_ping=True, pool_timeout=timeout_s, connect_args=connect_args)
    if parsed.database and parsed.database != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
    engine = create_engine(url, pool_timeout=timeout_s, connect_args={"timeout": timeout_s})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # pysqlite must not BEGIN on its own: _sqlite_begin does
    cursor = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", "foreign_keys=ON"):
        cursor.execute("PRAGMA " + pragma)
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # Lock waits inside SQLite (its busy handler backs off on its own) end with this attempt's deadline.
    deadline = getattr(_attempt, "deadline", None)
    if deadline is not None:
        busy_ms = max(1, int((deadline - time.monotonic()) * 1000))
        conn.connection.driver_connection.execute(f"PRAGMA busy_timeout = {busy_ms}")
    # A deferred transaction that reads and then writes fails at once (SQLITE_BUSY, no waiting) when another
    # writer committed in between; taking the write lock at BEGIN makes writers queue on the busy timeout instead.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")


def call_bounded(call: Callable[[], T], timeout_s: float) -> T:
    """call(); a transient database error (locked, busy, connection lost or refused, no pooled connection) is
    retried with exponential backoff until `timeout_s` has passed, then RegistryUnavailableError. A database that
    cannot be read at all (not a database, corrupt) is RegistryUnavailableError at once. Other errors pass."""
    deadline = time.monotonic() + timeout_s
    backoff = FIRST_BACKOFF_S
    while True:
        _attempt.deadline = deadline
        try:
            return call()
        except (OperationalError, InterfaceError, PoolTimeoutError) as e:
            error: Exception = e
        except IntegrityError:
            raise
        except DBAPIError as e:
            raise _unavailable(e, "cannot be read") from None
        finally:
            _attempt.deadline = None
        if time.monotonic() + backoff >= deadline:
            raise _unavailable(error, f"did not answer within {timeout_s:g} s") from None
        time.sleep(backoff)
        backoff = min(2 * backoff, MAX_BACKOFF_S)


def bounded(method: Callable[..., T]) -> Callable[..., T]:
    """Decorator for a RegistryStore method: the call goes through call_bounded with the store's timeout_s."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return call_bounded(lambda: method(self, *args, **kwargs), self.timeout_s)

    return call


def _unavailable(error: Exception, what: str) -> RegistryUnavailableError:
    cause = getattr(error, "orig", None) or error
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
    log.warning("model registry unavailable: the database %s (%s)", what, reason)
    return RegistryUnavailableError(
        f"The model registry is unavailable: its database {what} ({reason}). Retry later.",
        code="registry_unavailable",
    )
