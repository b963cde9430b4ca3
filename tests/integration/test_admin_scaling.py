"""/admin/models in-process, the scaling side: room checks at registration, autoscaling through PATCH, replica
counts in the admin API, and a scale-to-zero model's state on /v1/models. Serve is faked (tests/registry_fakes)."""
import pytest

from serving.registry.controller import AppState
from tests.integration.test_admin_api import assert_error, http, ready  # noqa: F401 - http: a fixture over `stack`
from tests.registry_fakes import admin_stack, node, replicas

EMBED = {"name": "e", "task": "embedding", "source": "fake:"}


@pytest.fixture
async def stack(tmp_path):
    """The admin stack on one 2-CPU node with 0.3 CPU free."""
    s = admin_stack(str(tmp_path / "registry.db"))
    s.ops.nodes_ = [node(2.0, free=0.3)]
    yield s
    await s.controller.wait_idle()
    s.store.close()


async def test_a_registration_without_room_is_refused_at_once_with_what_is_free(stack, http):
    r = await http.post("/admin/models", json={**EMBED, "resources": {"num_cpus": 0.5}})
    assert_error(r, 409, param="resources", code="insufficient_resources")
    assert r.json()["error"]["message"] == (
        "resources: asks 0.5 CPU, but Ray does not have that free now: the node with the most free has 0.3 CPU free "
        "(of 2 CPU); undeploy a model or lower resources.num_cpus")
    assert (await http.get("/admin/models/e")).status_code == 404  # nothing was registered
    r = await http.post("/admin/models", json={**EMBED, "resources": {"num_gpus": 0.5}})
    assert_error(r, 400, param="resources", code="insufficient_resources")
    assert "no Ray node has that much: the largest has 0 GPU" in r.json()["error"]["message"]
    r = await http.post("/admin/models", json={**EMBED, "resources": {"num_cpus": 0.5}, "deploy": False})
    assert r.status_code == 201, r.text  # only registering needs no room
    assert_error(await http.post("/admin/models/e/deploy"), 409, code="insufficient_resources")


async def test_an_update_that_needs_more_than_is_free_is_refused_and_changes_nothing(stack, http):
    assert (await http.post("/admin/models", json={**EMBED, "resources": {"num_cpus": 0.25}})).status_code == 201
    await ready(stack, http, "e")
    r = await http.patch("/admin/models/e", json={"resources": {"num_cpus": 0.5}})  # 0.25 held + 0.3 free: fits
    assert r.status_code == 200, r.text
    await ready(stack, http, "e")
    r = await http.patch("/admin/models/e", json={"num_replicas": 3})
    assert_error(r, 409, code="insufficient_resources")
    assert "asks 3 replicas of 0.5 CPU, of which 1 fit" in r.json()["error"]["message"]
    assert (await ready(stack, http, "e"))["config"]["num_replicas"] == 1


async def test_autoscaling_merges_field_by_field_and_null_goes_back_to_num_replicas(stack, http):
    assert (await http.post("/admin/models", json={**EMBED, "resources": {"num_cpus": 0.1}})).status_code == 201
    r = await http.patch("/admin/models/e", json={"autoscaling": {"max_replicas": 3}})
    assert r.status_code == 200, r.text
    scaling = r.json()["config"]["autoscaling"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_ongoing_requests"]) == (1, 3, 2.0)
    r = await http.patch("/admin/models/e", json={"autoscaling": {"min_replicas": 0, "downscale_delay_s": 5}})
    scaling = r.json()["config"]["autoscaling"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["downscale_delay_s"]) == (0, 3, 5)
    assert_error(await http.patch("/admin/models/e", json={"autoscaling": {"min_replicas": 4}}), 400)
    r = await http.patch("/admin/models/e", json={"autoscaling": None})
    assert r.json()["config"]["autoscaling"] is None


async def test_the_admin_api_shows_target_and_running_replicas(stack, http):
    body = {**EMBED, "resources": {"num_cpus": 0.1}, "autoscaling": {"min_replicas": 1, "max_replicas": 3}}
    assert (await http.post("/admin/models", json=body)).status_code == 201
    entry = await ready(stack, http, "e")
    assert {k: entry["replicas"][k] for k in ("target", "running", "starting")} == {
        "target": 1, "running": 1, "starting": 0}
    stack.ops.running["model:e"] = AppState("RUNNING", replicas=replicas(target=3, running=2, starting=1))
    stack.controller.report_placement("model:e", "r0", {"gpu_ids": [], "device": "cpu", "node_id": "node-1"})
    listed = (await http.get("/admin/models")).json()["data"][0]["replicas"]
    assert (listed["target"], listed["running"], listed["starting"]) == (3, 2, 1)
    assert listed["replicas"][0] == {"id": "r0", "state": "RUNNING", "node_id": "node-1", "gpu_ids": [],
                                     "device": "cpu", "cuda_visible_devices": None}


async def test_a_model_at_zero_replicas_is_listed_with_its_state(stack, http):
    body = {**EMBED, "resources": {"num_cpus": 0.1}, "autoscaling": {"min_replicas": 0, "max_replicas": 2}}
    assert (await http.post("/admin/models", json=body)).status_code == 201
    assert (await ready(stack, http, "e"))["replicas"]["target"] == 0

    async def state() -> str:
        await stack.routes.refresh()  # first load learns the model scales to zero, the next looks at its replicas
        await stack.routes.refresh()
        return (await http.get("/v1/models/e")).json()["state"]

    assert await state() == "scaled_to_zero"
    stack.ops.running["model:e"] = AppState("RUNNING", replicas=replicas(target=1, running=0, starting=1))
    assert await state() == "starting"
    stack.ops.running["model:e"] = AppState("RUNNING", replicas=replicas(target=1, running=1))
    assert await state() == "ready"
