"""The import paths of a Serve config file written by `openserve serve-config` (`serve deploy` calls these with the
file's `args`): the ingress over a fixed list of models, one application per model, and one per colocation group."""
from __future__ import annotations

from ray.serve import Application

from serving.application import ON_HEAD
from serving.config import ModelConfig, ServerConfig, group_app_name
from serving.deployments.host import ModelHost
from serving.deployments.ingress import Ingress
from serving.deployments.serve_ops import model_application


def ingress_app(args: dict) -> Application:
    """args: {server: the `server` section, models: the model configurations to route to}."""
    server = ServerConfig.model_validate(args["server"]).model_dump()
    models = [ModelConfig.model_validate(m).model_dump() for m in args.get("models", [])]
    return Ingress.options(name="ingress", ray_actor_options=ON_HEAD, max_ongoing_requests=1000).bind(
        server, secrets_path=None, controller=None, models=models
    )


def model_app(args: dict) -> Application:
    """args: {model: one model's configuration, data_dir: where its caches go}."""
    return model_application(ModelConfig.model_validate(args["model"]), args["data_dir"])


def group_app(args: dict) -> Application:
    """args: {group: the colocation group, data_dir: where its caches go}; its members come in the deployment's
    user_config (the file's `deployments` entry), as `openserve up` sends them."""
    return ModelHost.options(name=group_app_name(args["group"])).bind(args["group"], args["data_dir"])
