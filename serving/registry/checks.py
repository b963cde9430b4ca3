"""Checks before a model is registered or deployed, each returning a clear reason rather than a stack trace."""
from __future__ import annotations

from dataclasses import dataclass, field

from models.sources import SourceError, check_source
from serving.config import ModelConfig
from serving.upstream.config import key_problem

# Ray's resource names as the config spells them (custom resources keep their own names).
FIELD = {"CPU": "num_cpus", "GPU": "num_gpus"}


@dataclass(frozen=True)
class NodeResources:
    """One alive Ray node: its total resources and what is not reserved right now (Ray's names: CPU, GPU, ...)."""

    total: dict[str, float]
    free: dict[str, float] = field(default_factory=dict)
    node_id: str = ""


def source_problem(spec: ModelConfig) -> str | None:
    """Why `spec.source` cannot be served from here (unresolvable, or offline and not cached), or None. An upstream
    model's remote is not called here (it may be down now; its circuit breaker handles that): only its key is
    checked."""
    if spec.upstream is not None:
        return key_problem(spec.upstream)
    try:
        check_source(spec.source, spec.revision)
    except SourceError as e:
        return str(e)
    return None


def _amounts(need: dict[str, float], have: dict[str, float]) -> str:
    return " and ".join(f"{have.get(key, 0.0):g} {key}" for key in need)


def _asked(need: dict[str, float]) -> str:
    return " and ".join(f"{amount:g} {key}" for key, amount in need.items()) or "nothing"


def _fix(need: dict[str, float]) -> str:
    return " / ".join(f"resources.{FIELD.get(key, 'custom.' + key)}" for key in need)


def _fits(need: dict[str, float], have: dict[str, float]) -> bool:
    return all(have.get(key, 0.0) + 1e-9 >= amount for key, amount in need.items())


def _demand(spec: ModelConfig) -> dict[str, float]:
    """One replica's demand, scarcest first (GPUs and custom resources before CPUs): nodes compare in that order."""
    need = spec.resources.demand()
    return dict(sorted(need.items(), key=lambda kv: kv[0] == "CPU"))


def _largest(need: dict[str, float], pools: list[dict[str, float]]) -> dict[str, float]:
    return max(pools, key=lambda have: tuple(have.get(key, 0.0) for key in need), default={})


def _short(need: dict[str, float], have: dict[str, float]) -> dict[str, float]:
    """The part of `need` that `have` lacks (all of it when nothing in particular is short)."""
    return {k: v for k, v in need.items() if have.get(k, 0.0) + 1e-9 < v} or need


def resources_problem(spec: ModelConfig, nodes: list[NodeResources]) -> str | None:
    """Why no node of the cluster could ever hold one replica of `spec` (by total, not free, resources), or None.

    A replica that does not fit stays pending in Ray forever; this catches the hopeless case at once."""
    need = _demand(spec)
    if any(_fits(need, node.total) for node in nodes):
        return None
    largest = _largest(need, [n.total for n in nodes])
    short = _short(need, largest)
    return (
        f"one replica asks {_asked(need)}, but no Ray node has that much: the largest has {_amounts(short, largest)}; "
        f"lower {_fix(short)} or add a node that has them"
    )


def capacity_problem(spec: ModelConfig, nodes: list[NodeResources], released: ModelConfig | None = None) -> str | None:
    """Why the replicas a deploy of `spec` starts cannot be placed on what the nodes have free now, or None.

    `released`: the configuration the model runs today (an update replaces its replicas, so what they hold counts
    as free; counted on every node, since Ray does not say where they are: optimistic, Ray has the last word).
    Replicas are placed greedily, most free node first, as Ray's scheduler spreads them."""
    need, count = _demand(spec), spec.initial_replicas
    if count == 0 or not need:
        return None
    back = released.resources.demand() if released is not None else {}
    back_count = released.initial_replicas if released is not None else 0
    free = [{k: v + back.get(k, 0.0) * back_count for k, v in {**back, **n.free}.items()} for n in nodes]
    most = dict(_largest(need, free))
    placed = 0
    for _ in range(count):
        fitting = [have for have in free if _fits(need, have)]
        if not fitting:
            break
        best = max(fitting, key=lambda have: tuple(have.get(key, 0.0) for key in need))
        for key, amount in need.items():
            best[key] -= amount
        placed += 1
    if placed == count:
        return None
    short = _short(need, most)
    total = _largest(need, [n.total for n in nodes])
    replicas = f"{count} replicas of {_asked(need)}, of which {placed} fit" if count > 1 else _asked(need)
    return (
        f"asks {replicas}, but Ray does not have that free now: the node with the most free has "
        f"{_amounts(short, most)} free (of {_amounts(short, total)}); undeploy a model or lower {_fix(short)}"
        + (" or the replicas" if count > 1 else "")
    )
