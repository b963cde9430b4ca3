"""Checks before a model is registered or deployed, each returning a clear reason rather than a stack trace."""
from __future__ import annotations

from models.sources import SourceError, check_source
from serving.config import ModelConfig
from serving.upstream.config import key_problem


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


def _amount(resources: dict[str, float], key: str) -> str:
    value = resources.get(key, 0.0)
    return f"{value:g} {key}"


def resources_problem(spec: ModelConfig, nodes: list[dict[str, float]]) -> str | None:
    """Why no node of the cluster could ever hold one replica of `spec` (by total, not free, resources), or None.

    A replica that does not fit stays pending in Ray forever; this catches the hopeless case at once. A node that
    is busy now is left to the controller's schedule timeout.
    """
    need = {"CPU": spec.resources.num_cpus, "GPU": spec.resources.num_gpus}
    if any(all(node.get(key, 0.0) >= amount for key, amount in need.items()) for node in nodes):
        return None
    largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
    return (
        f"one replica needs {_amount(need, 'GPU')} and {_amount(need, 'CPU')}, but no Ray node has that much "
        f"(the largest has {_amount(largest, 'GPU')} and {_amount(largest, 'CPU')}); lower resources.num_gpus / "
        "resources.num_cpus or add a node that has them"
    )
