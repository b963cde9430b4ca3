"""The ingress application: HTTP (the OpenAI API and /admin) plus the registry controller.

Models are not part of it: each deployed model is a Serve application of its own (serving/deployments/serve_ops.py),
created by the controller from the registry, so deploying, updating or deleting one never redeploys the others.
"""
from __future__ import annotations

from ray.serve import Application

from serving.config import ServerConfig
from serving.deployments.controller import RegistryController
from serving.deployments.ingress import Ingress
from serving.deployments.placement import CONTROLLER_DEPLOYMENT
from serving.keys.records import stored_form

APP_NAME = "openserve"
# Ray's own resource of the head node (Ray Train and Data pin their state actors the same way): where a Serve config
# file (`serve deploy`, serving/serve_config.py) puts the ingress, and `openserve up` when it runs on the head's
# machine (see placement_here).
ON_HEAD = {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}


def placement_here(node_ip: str, head_ip: str | None) -> dict:
    """Ray actor options that keep the ingress and the controller on this machine (`openserve up`'s: they serve the
    address it prints and read the secrets file of its data dir). The head, when it is on this machine: a cluster of
    several nodes on one machine gives each the same `node:<ip>` resource, and a worker node may go away."""
    if head_ip == node_ip:
        return ON_HEAD
    return {"num_cpus": 0, "resources": {f"node:{node_ip}": 0.001}}


def for_replicas(server: ServerConfig) -> ServerConfig:
    """The server section as the ingress needs it: API keys leave this process only as hashes."""
    return server.model_copy(update={f: [stored_form(k) for k in getattr(server, f)]
                                     for f in ("api_keys", "admin_api_keys")})


def build_application(settings: dict, secrets_path: str, here: dict) -> Application:
    """Bind the ingress (which calls the controller) and the controller (one replica: the only deployer), both
    placed by `here` (placement_here: on `openserve up`'s machine, whose data dir holds the secrets file)."""
    controller = RegistryController.options(
        name=CONTROLLER_DEPLOYMENT, num_replicas=1, ray_actor_options=here, max_ongoing_requests=1000
    ).bind(settings, secrets_path, APP_NAME)
    ingress = Ingress.options(name="ingress", ray_actor_options=here, max_ongoing_requests=1000)
    return ingress.bind(settings, secrets_path, controller)
