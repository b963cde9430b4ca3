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
# Ray's own resource of the head node (Ray Train and Data pin their state actors the same way). On a cluster the
# ingress listens on the head, where clients and `openserve up` expect it, and the controller opens the registry
# from the head's data dir.
ON_HEAD = {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}


def build_application(server: ServerConfig) -> Application:
    """Bind the ingress (which calls the controller) and the controller (one replica: the only deployer)."""
    settings = server.model_dump()
    for field in ("api_keys", "admin_api_keys"):  # keys leave this process only as hashes (what the ingress needs)
        settings[field] = [stored_form(k) for k in settings[field]]
    controller = RegistryController.options(
        name=CONTROLLER_DEPLOYMENT, num_replicas=1, ray_actor_options=ON_HEAD, max_ongoing_requests=1000
    ).bind(settings, APP_NAME)
    ingress = Ingress.options(name="ingress", ray_actor_options=ON_HEAD, max_ongoing_requests=1000)
    return ingress.bind(settings, controller)
