"""EngineProcess: an LLM engine in a child process of its own (engine_child.py), an EngineClient over one Pipe.

Why a process: inside a Ray Serve replica the engine thread would share the GIL with Ray's threads and the
replica's event loops, which hand every streamed token along; HF models run many small Python-level ops per step,
each a GIL hand-off, and the engine stalls (figures: docs/engine-process.md). In its own process the engine has a
GIL of its own and the replica keeps only the streaming, as vLLM splits its API server and engine core.

The messages are serving/services/engine_messages.py's. The child runs an EngineCore, so no request can stop it.
The parent treats the engine as dead (EngineDeadError) when the pipe reaches EOF (the child exited, or was
killed), when the child reports EngineFailed, when no step ends within `step_timeout_s` while requests are pending
(a hung engine), and when the child is not ready within `start_timeout_s`.
"""
from __future__ import annotations

import logging
import multiprocessing
import subprocess
import sys
from typing import Any, Callable

from serving.services.engine_messages import (AbortRequests, AddRequest, EngineDeadError, EngineEvent, EngineFailed,
                                              EngineInfo, EngineReady, EngineStatsReport, RequestFailed, Stop,
                                              StepOutputs)

log = logging.getLogger(__name__)

START_TIMEOUT_S = 1800.0  # a first start may download and convert weights; the registry's deploy timeout is 1800 s
STEP_TIMEOUT_S = 60.0  # far above any sane step (a prefill chunk of a large model on CPU takes seconds)


class EngineStartError(RuntimeError):
    """The engine process did not become ready (its build raised, it exited, or it took too long)."""


class EngineProcess:
    """EngineClient for an engine built in a child process by `build(*args)` (a picklable top-level function)."""

    def __init__(self, build: Callable[..., Any], args: tuple = (), start_timeout_s: float = START_TIMEOUT_S,
                 step_timeout_s: float = STEP_TIMEOUT_S):
        """Start the child and wait until its engine is ready; EngineStartError if it is not."""
        self._conn, child_conn = multiprocessing.Pipe()
        fd = child_conn.fileno()
        self._process = subprocess.Popen([sys.executable, "-m", "serving.services.engine_child", str(fd)],
                                         pass_fds=(fd,))
        child_conn.close()  # the child holds the only other end: its exit is an EOF here
        self.step_timeout_s = step_timeout_s
        self.stats: Any = None  # the latest EngineStatsReport's stats
        self._unfinished: set[str] = set()
        try:
            self._send(list(sys.path))
            self._send((build, args))
            self.info: EngineInfo = self._wait_ready(start_timeout_s)
            self.stats = self.info.stats  # until the first report: the engine as loaded
        except EngineDeadError as e:
            self._abandon()
            raise EngineStartError(f"the engine process failed to start: {e}") from None
        except BaseException:
            self._abandon()
            raise

    @property
    def pid(self) -> int:
        return self._process.pid

    def add(self, request: AddRequest) -> None:
        self._send(request)
        self._unfinished.add(request.request_id)

    def add_many(self, requests: list[AddRequest]) -> None:
        self._send(list(requests))  # one message: the child adds them all before it steps
        self._unfinished.update(r.request_id for r in requests)

    def abort(self, request_ids: list[str]) -> None:
        ids = [rid for rid in request_ids if rid in self._unfinished]
        if ids:
            self._unfinished.difference_update(ids)
            self._send(AbortRequests(ids))

    def step(self) -> list[EngineEvent]:
        """Events of the child's next step, and of later ones already sent (so a slow reader catches up)."""
        if not self._conn.poll(self.step_timeout_s):
            self._kill()
            raise EngineDeadError(f"the engine made no progress for {self.step_timeout_s:.0f} s with requests "
                                  "pending; its process was killed")
        events = self._events(self._recv())
        while self._conn.poll(0):
            events += self._events(self._recv())
        return events

    def has_unfinished(self) -> bool:
        return bool(self._unfinished)

    def is_alive(self) -> bool:
        """Drains what arrived while idle (outputs of aborted requests, stats); False at EOF or EngineFailed."""
        if self._conn.closed:
            return False
        try:
            while self._conn.poll(0):
                self._events(self._recv())
        except EngineDeadError:
            return False
        return self._process.poll() is None

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._conn.send(Stop())
                self._process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()
        self._conn.close()

    def _wait_ready(self, timeout_s: float) -> EngineInfo:
        if not self._conn.poll(timeout_s):
            raise EngineStartError(f"the engine process was not ready after {timeout_s:.0f} s")
        message = self._recv()
        if isinstance(message, EngineReady):
            return message.info
        detail = message.message if isinstance(message, EngineFailed) else repr(message)
        raise EngineStartError(f"the engine process failed to start:\n{detail}")

    def _events(self, message: Any) -> list[EngineEvent]:
        if isinstance(message, StepOutputs):
            live = [out for out in message.outputs if out.request_id in self._unfinished]  # none after an abort
            for out in live:
                if out.finished:
                    self._unfinished.discard(out.request_id)
            return [StepOutputs(live)] if live else []
        if isinstance(message, RequestFailed):
            if message.request_id not in self._unfinished:
                return []
            self._unfinished.discard(message.request_id)
            return [message]
        if isinstance(message, EngineStatsReport):
            self.stats = message.stats
            return []
        self._kill()
        if isinstance(message, EngineFailed):
            raise EngineDeadError(f"the engine failed:\n{message.message}")
        raise EngineDeadError(f"the engine process sent an unknown message: {type(message).__name__}")

    def _send(self, message: Any) -> None:
        try:
            self._conn.send(message)
        except OSError:  # BrokenPipeError, ConnectionResetError: the child is gone
            raise EngineDeadError(f"the engine process exited (code {self._exitcode()})") from None

    def _recv(self) -> Any:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise EngineDeadError(f"the engine process exited (code {self._exitcode()})") from None

    def _exitcode(self) -> int | None:
        try:
            return self._process.wait(timeout=1)  # the pipe closes a moment before the process is reaped
        except subprocess.TimeoutExpired:
            return None

    def _abandon(self) -> None:
        """A child that never became ready has nothing to finish: kill it."""
        self._kill()
        self._conn.close()

    def _kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
