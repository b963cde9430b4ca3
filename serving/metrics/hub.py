"""The hub: one named Ray actor that keeps the latest snapshot pushed by every process and sums them on request.

HubState is the logic (no Ray, tested alone); MetricsHub is the actor around it. The ingress creates the hub
(detached, so an ingress restart keeps the sums; `openserve up` kills it on the way out) and every process finds it
by name.
"""
from __future__ import annotations

import functools
import time
from typing import Callable

from serving.metrics.snapshot import Family, merge, only_cumulative

HUB_NAME = "openserve-metrics"
HUB_NAMESPACE = "serve"  # Serve's replicas run in this namespace, so `ray.get_actor(HUB_NAME)` finds it there
STALE_S = 5.0  # a process silent this long (5 push intervals) no longer contributes gauges


class HubState:
    def __init__(self, stale_s: float = STALE_S, clock: Callable[[], float] = time.monotonic):
        self.stale_s = stale_s
        self.clock = clock
        self._sources: dict[str, tuple[list[Family], float]] = {}  # source -> (its latest snapshot, pushed at)

    def push(self, source: str, families: list[Family]) -> None:
        """Replace `source`'s snapshot (cumulative values: a repeated push counts once)."""
        self._sources[source] = (families, self.clock())

    def families(self, exclude: str | None = None) -> list[Family]:
        """The sum over every source but `exclude`; gauges only from sources heard from within stale_s."""
        now = self.clock()
        snapshots = []
        for source, (families, pushed_at) in self._sources.items():
            if source == exclude:
                continue
            snapshots.append(families if now - pushed_at <= self.stale_s else only_cumulative(families))
        return merge(snapshots)

    def sources(self) -> dict[str, float]:
        """Source -> seconds since its last push (for debugging a missing number)."""
        now = self.clock()
        return {source: round(now - at, 3) for source, (_, at) in self._sources.items()}


@functools.cache
def _actor_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1)
    class MetricsHub(HubState):
        pass

    return MetricsHub


def ensure_hub() -> None:
    """Create the hub if it does not exist yet (from inside the cluster: the ingress)."""
    _actor_class().options(name=HUB_NAME, namespace=HUB_NAMESPACE, get_if_exists=True,
                           lifetime="detached").remote()


def find_hub():
    """The hub's actor handle; ValueError if it does not exist (yet)."""
    import ray

    return ray.get_actor(HUB_NAME, namespace=HUB_NAMESPACE)


def kill_hub() -> None:
    """Remove the hub (detached actors outlive their creator on a shared cluster)."""
    import ray

    try:
        ray.kill(find_hub())
    except ValueError:
        pass
