"""ModelController.check_replicas over an in-memory Serve: scale changes logged, a model that lost its node failed
and ready again when a replica runs, a vanished application redeployed, placements shown with their replicas."""
import asyncio
import logging

import pytest

from serving.registry.controller import AppState, ModelController
from tests.registry_fakes import FAST, FakeServeOps, embedding as spec, node, replicas


@pytest.fixture
def ops():
    return FakeServeOps(nodes_=[node(2.0), node(1.0, special=1.0)])


@pytest.fixture
async def controller(store, ops):
    c = ModelController(store, ops, FAST)
    for name, kw in (("a", {}), ("special", {"resources": {"custom": {"special": 1}}})):
        store.create(spec(name, **kw), deployed=True, actor="t")
        c.notify(name)
    await c.wait_idle()
    assert {e.name: e.status for e in store.list()} == {"a": "ready", "special": "ready"}
    return c


async def test_a_model_whose_node_died_fails_keeps_its_application_and_recovers(store, ops, controller):
    ops.nodes_ = [node(2.0)]  # the node with `special` is gone; Serve restarts the replica, which cannot be placed
    ops.running["model:special"] = AppState("DEPLOYING", replicas=replicas(target=1, running=0, starting=1))
    await controller.check_replicas()
    entry = store.get("special")
    assert entry.status == "failed" and "no alive Ray node can hold one" in entry.error
    assert "lower resources.custom.special" in entry.error
    assert store.get("a").status == "ready" and ops.deleted == []  # Serve keeps trying; nothing else is touched
    await controller.check_replicas()  # still lost: stays failed, nothing deleted
    assert store.get("special").status == "failed" and ops.deleted == []

    ops.nodes_ = [node(2.0), node(1.0, special=1.0)]  # the node is back and Serve placed the replica
    ops.running["model:special"] = AppState("RUNNING", replicas=replicas(target=1, running=1))
    await controller.check_replicas()
    assert (store.get("special").status, store.get("special").error) == ("ready", None)


async def test_unschedulable_fails_a_model_with_minimum_replicas_but_not_one_that_scales_to_zero(store, ops, controller):
    store.create(spec("zero", autoscaling={"min_replicas": 0, "max_replicas": 2}), deployed=True, actor="t")
    controller.notify("zero")
    await controller.wait_idle()
    waiting = dict(message="1 replicas that have taken more than 30s to be scheduled", unschedulable=True,
                   replicas=replicas(target=1, running=0, starting=1))
    ops.running["model:zero"] = AppState("DEPLOYING", **waiting)  # a cold start with no room: the ingress' bound
    ops.running["model:a"] = AppState("DEPLOYING", **waiting)
    await controller.check_replicas()
    assert store.get("zero").status == "ready"
    assert store.get("a").status == "failed" and "none could be placed" in store.get("a").error


async def test_a_replica_being_replaced_is_left_to_serve_but_one_serve_gave_up_on_fails(store, ops, controller):
    ops.running["model:a"] = AppState("UNHEALTHY", "A replica's health check failed.",
                                      replicas=replicas(target=1, running=0, starting=1))
    await controller.check_replicas()
    assert store.get("a").status == "ready"  # its node can take the replacement: Serve restarts it
    ops.running["model:a"] = AppState("DEPLOY_FAILED", "RuntimeError: the constructor raised again",
                                      replicas=replicas(target=1, running=0))
    await controller.check_replicas()
    assert store.get("a").error == "no running replica: RuntimeError: the constructor raised again"


async def test_a_model_at_zero_replicas_is_not_lost(store, ops, controller):
    ops.running["model:a"] = AppState("RUNNING", replicas=replicas(target=0, running=0))
    await controller.check_replicas()
    assert store.get("a").status == "ready"


async def test_scale_changes_are_logged_once_each(store, ops, controller, caplog):
    caplog.set_level(logging.INFO, logger="ray.serve.openserve")
    await controller.check_replicas()
    ops.running["model:a"] = AppState("RUNNING", replicas=replicas(target=3, running=1, starting=2))
    await controller.check_replicas()
    await controller.check_replicas()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("a: ")]
    assert lines == ["a: 1 replica(s) running, target 1 (was unknown)",
                     "a: 1 replica(s) running, target 3 (was 1 running, target 1)"]


async def test_a_vanished_application_is_deployed_again(store, ops, controller):
    del ops.running["model:a"]
    await controller.check_replicas()
    await controller.wait_idle()
    assert "model:a" in ops.running and store.get("a").status == "ready" and ops.runs.count(("a", 8)) == 2


async def test_replicas_carry_what_each_replica_reported(store, ops, controller):
    controller.report_placement("model:a", "r0", {"gpu_ids": ["1"], "device": "cuda"})
    controller.report_placement("model:a", "gone", {"gpu_ids": ["0"], "device": "cuda"})
    view = await controller.replicas(max_age_s=0)
    assert set(view) == {"a", "special"}
    summary = view["a"].summary()
    assert (summary["target"], summary["running"]) == (1, 1)
    assert summary["replicas"] == [{"id": "r0", "state": "RUNNING", "node_id": "node-1", "gpu_ids": ["1"],
                                    "device": "cuda"}]
    assert "gone" not in controller._placements["model:a"]  # a replica that went away is forgotten


async def test_monitor_keeps_looking_after_an_error(store, ops, controller, monkeypatch):
    calls, third = [], asyncio.Event()
    loop = asyncio.get_running_loop()

    def flaky():  # runs in a worker thread
        calls.append(1)
        if len(calls) == 3:
            loop.call_soon_threadsafe(third.set)
        if len(calls) == 1:
            raise RuntimeError("serve hiccup")
        return dict(ops.running)

    monkeypatch.setattr(ops, "states", flaky)
    task = loop.create_task(controller.monitor())
    try:
        await asyncio.wait_for(third.wait(), 5)
    finally:
        task.cancel()
    assert store.get("a").status == "ready"


async def test_a_model_read_as_ready_is_read_with_the_replicas_serve_has_now(store, ops, controller):
    """The replica view is cached for a second; a look taken while the model deployed must not outlive its ready."""
    ops.outcomes["b"] = AppState("DEPLOYING", replicas=replicas(target=1, running=0, starting=1))
    store.create(spec("b"), deployed=True, actor="t")
    controller.notify("b")
    while "model:b" not in ops.running:  # the worker ran it and now polls it
        await asyncio.sleep(0)
    assert (await controller.replicas())["b"].summary()["running"] == 0  # the snapshot of a deploying model
    ops.running["model:b"] = AppState("RUNNING", replicas=replicas(target=1, running=1))
    await asyncio.wait_for(controller.wait_idle(), 5)
    assert store.get("b").status == "ready"
    assert (await controller.replicas())["b"].summary()["running"] == 1
