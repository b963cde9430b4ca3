"""ModelController with colocation groups over an in-memory Serve: one application per group, members joining,
changing, failing and leaving it in place while the others keep serving."""
from serving.registry.controller import AppState, MemberState, ModelController
from tests.registry_fakes import FAST, embedding, settle


def member(name: str, **kw):
    return embedding(name, colocate="cpu", **kw)



def statuses(store):
    return {e.name: e.status for e in store.list()}


async def test_members_deployed_together_make_one_application_once(store, ops, controller):
    for name in ("a", "b", "c"):
        store.create(member(name), deployed=True, actor="t")
    await settle(controller, "a", "b", "c")
    assert statuses(store) == {"a": "ready", "b": "ready", "c": "ready"}
    assert ops.group_runs == [("cpu", ["a", "b", "c"])] and ops.runs == []
    assert set(ops.running) == {"group:cpu"}
    replicas = await controller.replicas()
    assert set(replicas) == {"a", "b", "c"} and replicas["a"].running == 1  # the group's replica is each one's


async def test_a_member_that_fails_to_load_fails_alone_and_leaves_the_group(store, ops, controller):
    ops.member_outcomes["b"] = MemberState("failed", "SourceError: `x` is not a model dir")
    for name in ("a", "b"):
        store.create(member(name), deployed=True, actor="t")
    await settle(controller, "a", "b")
    assert statuses(store) == {"a": "ready", "b": "failed"}
    assert store.get("b").error == "the model failed to start: SourceError: `x` is not a model dir"
    assert ops.group_runs[-1] == ("cpu", ["a"]) and "group:cpu" not in ops.deleted
    ops.member_outcomes.clear()  # fixed: a redeploy brings it back into the group
    await settle(controller, "b")
    assert statuses(store) == {"a": "ready", "b": "ready"} and ops.group_runs[-1] == ("cpu", ["a", "b"])


async def test_a_member_is_ready_only_once_the_replica_holds_its_spec(store, ops):
    controller = ModelController(store, ops, FAST.__class__(deploy_timeout_s=0.2, route_grace_s=0, poll_s=0.01))
    store.create(member("a"), deployed=True, actor="t")
    await settle(controller, "a")
    store.update(member("a", batching={"max_batch_size": 4}), actor="t")
    real_run = ops.run_group
    ops.run_group = lambda group, members: None  # Serve has not applied the change (the replica holds the old spec)
    controller.notify("a")
    await controller.wait_idle()
    assert store.get("a").status == "failed" and "not ready after" in store.get("a").error
    ops.run_group = real_run


async def test_changing_a_member_updates_the_group_in_place(store, ops, controller):
    for name in ("a", "b"):
        store.create(member(name), deployed=True, actor="t")
    await settle(controller, "a", "b")
    store.update(member("a", batching={"max_batch_size": 4}), actor="t")
    await settle(controller, "a")
    assert statuses(store) == {"a": "ready", "b": "ready"}
    assert len(ops.group_runs) == 2 and ops.members["group:cpu"]["a"]["batching"]["max_batch_size"] == 4
    assert ops.deleted == []


async def test_undeploying_members_shrinks_the_group_then_deletes_it(store, ops, controller):
    for name in ("a", "b"):
        store.create(member(name), deployed=True, actor="t")
    await settle(controller, "a", "b")
    store.set_deployed("a", False, actor="t")
    await settle(controller, "a")
    assert store.get("a").status == "stopped" and ops.group_runs[-1] == ("cpu", ["b"])
    store.delete("b")
    await settle(controller, "b")
    assert ops.deleted == ["group:cpu"] and ops.running == {}


async def test_a_model_moves_between_its_own_application_and_a_group(store, ops, controller):
    store.create(member("a"), deployed=True, actor="t")
    store.create(embedding("b"), deployed=True, actor="t")  # its own application first
    await settle(controller, "a", "b")
    assert set(ops.running) == {"group:cpu", "model:b"}
    store.update(member("b"), actor="t")  # into the group: it serves from there, then its own app goes
    await settle(controller, "b")
    assert store.get("b").status == "ready" and set(ops.running) == {"group:cpu"}
    assert ops.group_runs[-1] == ("cpu", ["a", "b"]) and ops.deleted == ["model:b"]
    store.update(embedding("a"), actor="t")  # out of the group: the group's last model goes, and its app
    await settle(controller, "a")
    assert store.get("a").status == "ready" and set(ops.running) == {"group:cpu", "model:a"}
    assert ops.group_runs[-1] == ("cpu", ["b"])


async def test_a_group_that_cannot_start_fails_its_members(store, ops, controller):
    ops.outcomes["group:cpu"] = AppState("DEPLOY_FAILED", "RuntimeError: no room")
    store.create(member("a"), deployed=True, actor="t")
    await settle(controller, "a")
    assert store.get("a").status == "failed" and "RuntimeError: no room" in store.get("a").error
    assert ops.running == {}  # its only member failed: the group's application is gone


async def test_reconcile_keeps_the_group_application_and_a_vanished_one_comes_back(store, ops, controller):
    for name in ("a", "b"):
        store.create(member(name), deployed=True, actor="t")
    await settle(controller, "a", "b")
    await controller.reconcile_all()
    await controller.wait_idle()
    assert ops.deleted == [] and statuses(store) == {"a": "ready", "b": "ready"}
    ops.running.clear()  # Serve lost it
    await controller.check_replicas()
    await controller.wait_idle()
    assert "group:cpu" in ops.running and ops.group_runs[-1] == ("cpu", ["a", "b"])
