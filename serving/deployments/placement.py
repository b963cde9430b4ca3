"""Where a model replica runs: the device its backend uses, and a report of it to the registry controller."""
from __future__ import annotations

import logging
import os

import ray
from ray import serve

log = logging.getLogger("ray.serve")

CONTROLLER_DEPLOYMENT = "registry-controller"


def place_replica(spec: dict, report_to: str | None) -> dict:
    """The spec this replica builds its backend from, its device fixed: `auto` is CUDA when Ray gave the replica a
    GPU share (Ray points CUDA_VISIBLE_DEVICES at that GPU, so `cuda` is it), else CPU, so a replica never computes
    on a GPU Ray did not reserve for it. Tells the controller of app `report_to` (if any) where it runs."""
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    device = spec.get("device", "auto")
    if device == "auto":
        device = "cuda" if gpu_ids else "cpu"
    placement = {
        "node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": gpu_ids, "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    log.info("model %s replica on node %s, device %s, GPUs %s", spec["name"], placement["node_id"][:12], device,
             gpu_ids or "none")
    if report_to:
        _report(spec, report_to, placement)
    return {**spec, "device": device}


def _report(spec: dict, report_to: str, placement: dict) -> None:
    """Fire and forget: a replica never fails or waits because the controller is away."""
    try:
        replica_id = serve.get_replica_context().replica_id.unique_id
        app = serve.get_replica_context().app_name
        controller = serve.get_deployment_handle(CONTROLLER_DEPLOYMENT, report_to)
        controller.report_placement.remote(app, replica_id, placement)
    except Exception as e:  # e.g. deployed by `serve deploy` without the registry
        log.info("placement of %s not reported: %r", spec["name"], e)
