"""`openserve serve-config`: the running configuration as a Ray Serve config file (for `serve deploy`) or as a
KubeRay RayService manifest, so that a team can deploy with Ray's own tooling instead of `openserve up`.

In that form the Serve config file is what says which models run: the ingress routes to exactly its models and has
no /admin (change the file and deploy it again). Ray's schema (ServeDeploySchema) validates the file before it is
written."""
from __future__ import annotations

import yaml
from ray.serve.schema import ServeDeploySchema

from serving.application import APP_NAME, ON_HEAD
from serving.config import ModelConfig, ServerConfig
from serving.deployments.serve_ops import deployment_options, group_options
from serving.keys.records import stored_form

INGRESS_APP = "serving.serve_apps:ingress_app"
MODEL_APP = "serving.serve_apps:model_app"
GROUP_APP = "serving.serve_apps:group_app"


def _compact(model) -> dict:
    return model.model_dump(mode="json", exclude_defaults=True)


def _model_application(model: ModelConfig, data_dir: str) -> dict:
    options = deployment_options(model)  # the same settings `openserve up` gives Serve
    return {
        "name": model.deployment_name, "route_prefix": None, "import_path": MODEL_APP,
        "args": {"model": _compact(model), "data_dir": data_dir},
        "deployments": [options],
    }


def _group_application(group: str, members: list[ModelConfig], data_dir: str) -> dict:
    """A colocation group's application: its members travel in the deployment's user_config, so that `serve deploy`
    of a file with a member added or removed updates the live replica in place."""
    options = group_options(group, members)
    return {
        "name": options["name"], "route_prefix": None, "import_path": GROUP_APP,
        "args": {"group": group, "data_dir": data_dir}, "deployments": [options],
    }


def _applications(models: list[ModelConfig], data_dir: str) -> list[dict]:
    """One application per model, and one per colocation group (where its first member comes)."""
    groups: dict[str, list[ModelConfig]] = {}
    for model in models:
        if model.colocate is not None:
            groups.setdefault(model.colocate, []).append(model)
    apps = []
    for model in models:
        if model.colocate is None:
            apps.append(_model_application(model, data_dir))
        elif groups[model.colocate][0] is model:
            apps.append(_group_application(model.colocate, groups[model.colocate], data_dir))
    return apps


def serve_config(server: ServerConfig, models: list[ModelConfig]) -> dict:
    """A Serve config file (ServeDeploySchema) serving `models` behind the ingress on server.host:port. API keys
    are written as their hashes (sha256:...), as the ingress stores them: the file holds no secret."""
    hashed = {f: [stored_form(k) for k in getattr(server, f)] for f in ("api_keys", "admin_api_keys")}
    ingress = {
        "name": APP_NAME, "route_prefix": None, "import_path": INGRESS_APP,
        "args": {"server": _compact(server.model_copy(update=hashed)), "models": [_compact(m) for m in models]},
        "deployments": [{"name": "ingress", "ray_actor_options": ON_HEAD, "max_ongoing_requests": 1000}],
    }
    config = {
        "proxy_location": "Disabled",  # the ingress serves HTTP itself (serving/deployments/ingress.py)
        "applications": [ingress] + _applications(models, server.resolved_data_dir),
    }
    ServeDeploySchema.model_validate(config)  # Ray's own check: a file `serve deploy` refuses is never written
    return config


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the RayService's embedded Serve config) as literal blocks, readable and diffable."""


_Dumper.add_representer(
    str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None)
)


def dump(document: dict) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False)


def rayservice(config: dict, name: str, image: str, gpu_workers: int) -> dict:
    """A KubeRay RayService running `config`: a head (ingress, controller, CPU models) from `image`, and a group
    of up to `gpu_workers` one-GPU workers that KubeRay's autoscaler adds as replicas ask for GPUs."""
    server = next(a["args"]["server"] for a in config["applications"] if a["name"] == APP_NAME)
    port = ServerConfig.model_validate(server).port
    container = {"image": image, "imagePullPolicy": "IfNotPresent"}
    head = {**container, "name": "ray-head", "ports": [
        {"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": port, "name": "openserve"}]}
    worker = {**container, "name": "ray-worker", "resources": {"limits": {"nvidia.com/gpu": 1}}}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": dump(config),
            "rayClusterConfig": {
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0"},
                                  "template": {"spec": {"containers": [head]}}},
                "workerGroupSpecs": [{
                    "groupName": "gpu", "replicas": 0, "minReplicas": 0, "maxReplicas": gpu_workers,
                    "rayStartParams": {}, "template": {"spec": {"containers": [worker]}},
                }],
            },
        },
    }
