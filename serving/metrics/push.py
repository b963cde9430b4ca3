"""MetricsPusher: a daemon thread that sends this process' snapshot to the hub every `interval_s`.

A push is one fire-and-forget actor call of a few kilobytes; a push still in flight when the next is due is not
doubled up (the next one carries everything anyway: values are cumulative). No hub yet, or a hub that restarted:
look it up again next time.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from serving.metrics.definitions import REGISTRY
from serving.metrics.snapshot import snapshot

log = logging.getLogger("serving.metrics")

PUSH_INTERVAL_S = 1.0


def source_id(role: str) -> str:
    """Unique for this process' life: a restarted replica (even with the same pid) is a new source."""
    return f"{role}@{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class MetricsPusher:
    def __init__(self, source: str, find_hub: Callable[[], Any], registry: CollectorRegistry = REGISTRY,
                 interval_s: float = PUSH_INTERVAL_S):
        self.source = source
        self.find_hub = find_hub
        self.registry = registry
        self.interval_s = interval_s
        self._hub = None
        self._in_flight = None  # the last push's ObjectRef
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-push", daemon=True)

    def start(self) -> MetricsPusher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        wait = self.interval_s
        while not self._stop.wait(wait):
            try:
                self.push_once()
            except Exception:  # noqa: BLE001 - metrics must never take the process down; try again next time
                log.debug("pushing metrics failed", exc_info=True)
                self._hub = None
            # No hub (metrics off, or not created yet): look for it less and less often, up to every 30 s.
            wait = self.interval_s if self._hub is not None else min(30.0, wait * 2)

    def push_once(self) -> bool:
        """Send a snapshot unless the previous one is still on its way; False when skipped or no hub."""
        import ray

        if self._in_flight is not None:
            done, _ = ray.wait([self._in_flight], timeout=0)
            if not done:
                return False
            try:
                ray.get(done[0])
            finally:
                self._in_flight = None
        if self._hub is None:
            try:
                self._hub = self.find_hub()
            except ValueError:  # not created yet
                return False
        self._in_flight = self._hub.push.remote(self.source, snapshot(self.registry))
        return True


_pusher: MetricsPusher | None = None
_lock = threading.Lock()


def start_pushing(role: str) -> str:
    """Start this process' pusher (once; later calls return the same source id)."""
    global _pusher
    from serving.metrics.hub import find_hub

    with _lock:
        if _pusher is None:
            _pusher = MetricsPusher(source_id(role), find_hub).start()
        return _pusher.source
