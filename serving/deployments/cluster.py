"""What Ray and Serve say about the cluster: each node's resources, each model application's replicas."""
from __future__ import annotations

import ray
from ray._private.state import available_resources_per_node  # DeveloperAPI: Ray's only per-node view of what is free
from ray.serve.context import _get_global_client

from serving.config import GROUP_APP_PREFIX, MODEL_APP_PREFIX
from serving.registry.checks import NodeResources
from serving.registry.controller import AppState, ReplicaInfo, Replicas


def value(status) -> str:
    """An enum's value (Serve's statuses arrive as enums or strings)."""
    return str(getattr(status, "value", status))


def _replicas(deployment: dict) -> Replicas:
    return Replicas(
        target=int(deployment.get("target_num_replicas") or 0),
        replicas=tuple(
            ReplicaInfo(replica_id=r["replica_id"], state=value(r["state"]), node_id=r.get("node_id"))
            for r in deployment.get("replicas", [])
        ),
    )


def model_states() -> dict[str, AppState]:
    """Every model application (a model's own or a colocation group's) with its replicas, from one call for Serve's
    details (the ServeInstanceDetails dict that `serve status -v` and the dashboard show; the client call is Serve's
    own, not public API)."""
    states = {}
    for name, app in _get_global_client().get_serve_details().get("applications", {}).items():
        if not name.startswith((MODEL_APP_PREFIX, GROUP_APP_PREFIX)):
            continue
        deployment = app.get("deployments", {}).get(name, {})
        message = "\n".join(m for m in (app.get("message"), deployment.get("message")) if m)
        states[name] = AppState(
            status=value(app["status"]), message=message,
            unschedulable="to be scheduled" in (deployment.get("message") or ""),
            replicas=_replicas(deployment) if deployment else None,
        )
    return states


def node_resources() -> list[NodeResources]:
    """Each alive node's total and free (unreserved) resources."""
    free = available_resources_per_node()
    return [
        NodeResources(total=dict(node["Resources"]), free=dict(free.get(node["NodeID"], {})), node_id=node["NodeID"])
        for node in ray.nodes() if node.get("Alive")
    ]


