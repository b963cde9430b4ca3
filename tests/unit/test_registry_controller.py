"""ModelController over an in-memory Serve: deploys, failures with reasons, timeouts, updates, undeploys."""
import sqlite3

from serving.registry.controller import AppState, ModelController, failure_reason
from tests.registry_fakes import FAST, embedding as spec, settle


async def test_deploy_becomes_ready(store, ops, controller):
    store.create(spec("m"), deployed=True, actor="a")
    await settle(controller, "m")
    assert store.get("m").status == "ready"
    assert ops.runs == [("m", 8)]


async def test_constructor_failure_marks_failed_with_the_cause_and_cleans_up(store, ops, controller):
    traceback = "Traceback (most recent call last):\n  File ...\n\x1b[36mSourceError: `x` is not a model dir\x1b[0m\n"
    ops.outcomes["m"] = AppState("DEPLOY_FAILED", traceback)
    store.create(spec("m"), deployed=True, actor="a")
    await settle(controller, "m")
    entry = store.get("m")
    assert entry.status == "failed" and entry.deployed
    assert entry.error == "the model failed to start: SourceError: `x` is not a model dir"
    assert ops.running == {}


async def test_unresolvable_source_fails_before_anything_is_deployed(store, ops, controller):
    store.create(spec("m", source="/no/such/model"), deployed=True, actor="a")
    await settle(controller, "m")
    entry = store.get("m")
    assert entry.status == "failed" and "does not exist" in entry.error
    assert ops.runs == []


async def test_a_replica_no_node_can_hold_fails_at_once(store, ops, controller):
    store.create(spec("m", resources={"num_gpus": 1}), deployed=True, actor="a")
    await settle(controller, "m")
    entry = store.get("m")
    assert entry.status == "failed" and "asks 1 GPU and 0.25 CPU" in entry.error and "largest has 0 GPU;" in entry.error
    assert ops.runs == []


async def test_pending_resources_fail_after_the_schedule_timeout(store, ops, controller):
    ops.outcomes["m"] = AppState("DEPLOYING", "has 1 replicas that have taken more than 30s to be scheduled",
                                 unschedulable=True)
    store.create(spec("m"), deployed=True, actor="a")
    await settle(controller, "m")
    entry = store.get("m")
    assert entry.status == "failed" and entry.error.startswith("no Ray node could take a replica")
    assert ops.running == {}


async def test_never_ready_fails_after_the_deploy_timeout(store, ops):
    ops.outcomes["m"] = AppState("DEPLOYING")
    store.create(spec("m"), deployed=True, actor="a")
    controller = ModelController(store, ops, FAST.__class__(deploy_timeout_s=0.1, route_grace_s=0, poll_s=0.01))
    await settle(controller, "m")
    assert "not ready after" in store.get("m").error


async def test_undeploy_drains_and_stops(store, ops, controller):
    store.create(spec("m"), deployed=True, actor="a")
    await settle(controller, "m")
    store.set_deployed("m", False, actor="a")
    await settle(controller, "m")
    assert store.get("m").status == "stopped"
    assert ops.deleted == ["model:m"] and ops.running == {}


async def test_alias_change_does_not_redeploy_but_batching_does(store, ops, controller):
    store.create(spec("m"), deployed=True, actor="a")
    await settle(controller, "m")
    store.update(spec("m", aliases=["x"]), actor="a")
    await settle(controller, "m")
    assert ops.runs == [("m", 8)] and store.get("m").status == "ready"
    store.update(spec("m", aliases=["x"], batching={"max_batch_size": 2}), actor="a", status="updating")
    await settle(controller, "m")
    assert ops.runs == [("m", 8), ("m", 2)]
    assert (store.get("m").status, store.get("m").version) == ("ready", 3)


async def test_deleted_entry_has_its_application_removed(store, ops, controller):
    store.create(spec("org/m"), deployed=True, actor="a")
    await settle(controller, "org/m")
    store.delete("org/m")
    await settle(controller, "org/m")
    assert ops.deleted == ["model:org~m"]


async def test_a_change_during_a_deploy_wins(store, ops, controller):
    ops.outcomes["m"] = AppState("DEPLOYING")  # never ready by itself
    store.create(spec("m"), deployed=True, actor="a")
    controller.notify("m")
    store.set_deployed("m", False, actor="a")
    controller.notify("m")
    await controller.wait_idle()
    assert store.get("m").status == "stopped" and ops.running == {}


async def test_reconcile_all_deploys_wanted_models_and_removes_orphans(store, ops, controller):
    store.create(spec("a"), deployed=True, actor="x")
    store.create(spec("b"), deployed=False, actor="x")
    ops.running["model:gone"] = AppState("RUNNING")
    await controller.reconcile_all()
    await controller.wait_idle()
    assert {e.name: e.status for e in store.list()} == {"a": "ready", "b": "registered"}
    assert "model:gone" in ops.deleted


async def test_reconcile_all_keeps_the_application_of_a_row_it_cannot_read(tmp_path, store, ops, controller):
    store.create(spec("a"), deployed=True, actor="x")
    await controller.reconcile_all()
    await controller.wait_idle()
    with sqlite3.connect(tmp_path / "r.db") as conn:  # damaged by hand, or written by another release
        conn.execute("UPDATE models SET options = '{not json' WHERE name = 'a'")
    await controller.reconcile_all()
    await controller.wait_idle()
    assert "model:a" in ops.running and ops.deleted == []


def test_failure_reason_is_the_final_exception_with_all_its_lines():
    assert failure_reason("RuntimeError: Traceback\n  x\nValueError: bad\n\n") == "ValueError: bad"
    multi = "Traceback:\n  File x\n    raise ValueError(\nValueError: Couldn't load from:\n(1) a file\nInstall y."
    assert failure_reason(multi) == "ValueError: Couldn't load from: (1) a file Install y."
    assert failure_reason("just text") == "just text"
    assert "no message" in failure_reason("")


async def test_serve_refusing_the_application_fails_the_model(store, ops, controller, monkeypatch):
    def refuse(spec):
        raise ValueError("autoscaling_config.min_replicas is invalid")

    monkeypatch.setattr(ops, "run", refuse)
    store.create(spec("m"), deployed=True, actor="a")
    await settle(controller, "m")
    assert store.get("m").error == "Ray Serve refused the deployment: ValueError: autoscaling_config.min_replicas is invalid"


def test_the_registry_logic_runs_without_ray():
    """Store, controller, routes and admin service import no Ray: they are tested (and usable) without a cluster."""
    import subprocess
    import sys

    code = ("import sys, serving.registry.store, serving.registry.controller, serving.registry.routes, "
            "serving.admin.service, serving.admin.app; print('ray' in sys.modules)")
    root = __file__.rsplit("/tests/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"
