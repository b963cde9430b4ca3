"""The engine process itself: `python -m serving.services.engine_child <fd>`, started by EngineProcess.

A plain interpreter rather than a multiprocessing child: a spawned child re-runs its parent's main module first,
and a Ray worker's is Ray's own (seconds of imports that the engine never uses, paid again on every restart).

On the connection `fd`: the parent's sys.path, then (build, args); the child builds the engine with `build(*args)`,
answers EngineReady (or EngineFailed), then runs commands and steps through an EngineCore until Stop or EOF.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import logging
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

from serving.services.engine_core import EngineCore
from serving.services.engine_messages import (AbortRequests, AddRequest, EngineFailed, EngineInfo, EngineReady,
                                              EngineStatsReport)

log = logging.getLogger("serving.services.engine_child")

STATS_INTERVAL_S = 1.0  # how often a busy engine reports its stats
IDLE_RELEASE_S = 1.0  # idle this long after work, the engine process hands freed memory back (release_freed_memory)


def main(fd: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conn = Connection(fd)
    try:
        sys.path[:] = conn.recv()  # before unpickling `build`, which may live anywhere the parent could import
        build, args = conn.recv()
    except (EOFError, OSError):
        return
    run(conn, build, args)


def run(conn: Connection, build: Callable[..., Any], args: tuple) -> None:
    """Build the engine, report it, then serve the parent until told to stop or orphaned."""
    try:
        engine = build(*args)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        _report_failure(conn)
        return
    release_freed_memory()
    try:
        conn.send(EngineReady(EngineInfo.of(engine)))
        serve(conn, EngineCore(engine))
    except (EOFError, OSError):  # the parent is gone
        return
    except BaseException:  # noqa: BLE001 - the parent restarts the engine
        log.exception("the engine cannot go on")
        _report_failure(conn)


def release_freed_memory(collect: bool = True) -> None:
    """Hand memory the process freed back to the OS (glibc's malloc_trim; nothing elsewhere), after a garbage
    collection when `collect` (a costly one: after load, not when idle).

    Loading frees far more than it keeps (the float32 weights cast to bf16, the bf16 layers replaced by packed
    copies, the probes' activations), and glibc keeps freed heap pages mapped for reuse (figures:
    docs/engine-memory.md)."""
    if collect:
        gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc():
    """The process's own C library when it has malloc_trim (glibc), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def _report_failure(conn: Connection) -> None:
    try:
        conn.send(EngineFailed(traceback.format_exc()))
    except OSError:  # the parent is gone: nobody to tell
        pass


def serve(conn: Connection, core: EngineCore) -> None:
    """Run commands as they come and step while there is work; one StepOutputs per step, empty ones included."""
    stats = _StatsReporter(core.engine)
    busy = False
    while True:
        if not core.has_work():
            # Idle for IDLE_RELEASE_S after work: what the steps freed (activations) goes back to the OS. Not at
            # once: requests back to back would fault the pages in again (measured: docs/engine-memory.md).
            if busy and not conn.poll(IDLE_RELEASE_S):
                release_freed_memory(collect=False)
            busy = False
            conn.poll(None)  # idle: sleep until a command comes (or the parent goes: EOF)
        while conn.poll(0):
            message = conn.recv()
            if isinstance(message, (AddRequest, list)):  # a list: requests admitted together (add_many)
                for request in message if isinstance(message, list) else [message]:
                    refused = core.add(request)
                    if refused is not None:
                        conn.send(refused)
            elif isinstance(message, AbortRequests):
                core.abort(message.request_ids)
            else:  # Stop
                return
        if core.has_work():
            busy = True
            for event in core.step():
                conn.send(event)
            stats.maybe_send(conn, now=not core.has_work())  # the last step's stats too: idle shows idle


class _StatsReporter:
    """Sends the engine's stats() every STATS_INTERVAL_S while busy, and when it falls idle. Stats never stop the
    engine: if stats() raises, that is logged once and no more are sent."""

    def __init__(self, engine):
        self._engine = engine
        self._next = time.monotonic()
        self._enabled = True

    def maybe_send(self, conn: Connection, now: bool = False) -> None:
        clock = time.monotonic()
        if not self._enabled or (clock < self._next and not now):
            return
        self._next = clock + STATS_INTERVAL_S
        try:
            stats = self._engine.stats()
        except Exception as e:  # noqa: BLE001 - telemetry only
            log.warning("the engine's stats() failed (%r); no stats will be reported", e)
            self._enabled = False
            return
        conn.send(EngineStatsReport(stats))


if __name__ == "__main__":
    main(int(sys.argv[1]))
