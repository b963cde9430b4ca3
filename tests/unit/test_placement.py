"""A replica's device: `auto` is CUDA exactly when Ray gave the replica a GPU share; where it runs is reported to the
registry controller, and a failed report never fails the replica."""
import types

import pytest

from serving.deployments import placement


@pytest.fixture
def ray_gave(monkeypatch):
    def give(gpu_ids: list, visible: str | None = None):
        monkeypatch.setattr(placement.ray, "get_gpu_ids", lambda: gpu_ids)
        context = types.SimpleNamespace(get_node_id=lambda: "node-abc")
        monkeypatch.setattr(placement.ray, "get_runtime_context", lambda: context)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return give


def test_auto_is_cuda_only_with_a_gpu_share(ray_gave):
    ray_gave([1], "1")
    assert placement.place_replica({"name": "m", "device": "auto"}, None)["device"] == "cuda"
    ray_gave([])
    assert placement.place_replica({"name": "m", "device": "auto"}, None)["device"] == "cpu"
    assert placement.place_replica({"name": "m", "device": "cuda"}, None)["device"] == "cuda"  # asked for: kept


def test_the_placement_is_reported_and_a_failed_report_is_harmless(ray_gave, monkeypatch):
    ray_gave([0], "0")
    sent = []

    class Controller:
        class report_placement:  # noqa: N801 - the handle method's name
            @staticmethod
            def remote(app, replica_id, info):
                sent.append((app, replica_id, info))

    context = types.SimpleNamespace(replica_id=types.SimpleNamespace(unique_id="r1"), app_name="model:m")
    monkeypatch.setattr(placement.serve, "get_replica_context", lambda: context)
    monkeypatch.setattr(placement.serve, "get_deployment_handle", lambda name, app: Controller)
    placement.place_replica({"name": "m", "device": "auto"}, "openserve")
    assert sent == [("model:m", "r1", {"node_id": "node-abc", "gpu_ids": ["0"], "device": "cuda",
                                       "cuda_visible_devices": "0"})]

    def unreachable(name, app):
        raise KeyError("no such application")

    monkeypatch.setattr(placement.serve, "get_deployment_handle", unreachable)
    assert placement.place_replica({"name": "m", "device": "auto"}, "openserve")["device"] == "cuda"


def test_the_ingress_goes_on_the_head_when_the_head_is_on_this_machine_else_on_this_node():
    from serving.application import ON_HEAD, placement_here

    assert placement_here("10.0.0.5", "10.0.0.5") == ON_HEAD  # one machine, several nodes: each has node:10.0.0.5
    assert placement_here("10.0.0.7", "10.0.0.5") == {"num_cpus": 0, "resources": {"node:10.0.0.7": 0.001}}
    assert placement_here("10.0.0.7", None)["resources"] == {"node:10.0.0.7": 0.001}
