"""Turn an AppConfig into one Ray Serve application: a deployment per model, behind the ingress."""
from __future__ import annotations

import time

from ray.serve import Application

from serving.config import AppConfig, ModelConfig
from serving.deployments.chat import ChatDeployment
from serving.deployments.embedding import EmbeddingDeployment
from serving.deployments.image import ImageDeployment
from serving.deployments.ingress import Ingress
from serving.deployments.speech import SpeechDeployment

APP_NAME = "openserve"
DEPLOYMENTS = {
    "chat": ChatDeployment,
    "embedding": EmbeddingDeployment,
    "image": ImageDeployment,
    "speech": SpeechDeployment,
}


def model_deployment(model: ModelConfig, data_dir: str) -> Application:
    deployment = DEPLOYMENTS[model.task].options(
        name=model.deployment_name,
        num_replicas=model.num_replicas,
        max_ongoing_requests=model.max_ongoing_requests,
        ray_actor_options={"num_cpus": model.resources.num_cpus, "num_gpus": model.resources.num_gpus},
        health_check_period_s=10,
        graceful_shutdown_timeout_s=30,  # undeploy and Ctrl-C let in-flight requests finish first
    )
    return deployment.bind(model.model_dump(), data_dir)


# Backend options the HTTP layer needs before calling the model (image defaults and limits).
CARD_OPTIONS = ("default_size", "default_steps", "default_guidance_scale", "size_multiple", "max_pixels")


def model_card(model: ModelConfig, created: int) -> dict:
    metadata = {"source": model.source, **{k: v for k, v in model.options.items() if k in CARD_OPTIONS}}
    if model.description:
        metadata["description"] = model.description
    return {"id": model.name, "task": model.task, "created": created, "owned_by": "openserve", "metadata": metadata}


def build_application(config: AppConfig) -> Application:
    created = int(time.time())
    data_dir = config.server.resolved_data_dir
    models = [model_deployment(m, data_dir) for m in config.models]
    cards = [model_card(m, created) for m in config.models]
    ingress = Ingress.options(name="ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    return ingress.bind(config.server.model_dump(), cards, models)
