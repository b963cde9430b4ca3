"""A colocation group's replica (serving/deployments/host.py) without Ray: members added, changed and removed in
place while the others keep answering, a member whose load fails reported failed alone, calls dispatched by model
name. Real `fake:` backends; loads gated on events; every wait bounded."""
from __future__ import annotations

import asyncio
import os
import threading

import pytest

from models.images.types import ImageParams
from models.speech.types import SpeechParams
from serving.config import ModelConfig
from serving.deployments import host as host_module
from serving.deployments.common import load_backend
from serving.deployments.host import Members, ModelHost, compute_threads, member_config, own_device, spec_key
from serving.deployments.serve_ops import group_actor_options, group_options
from serving.errors import ModelNotFoundError, ModelUnavailableError
from serving.metrics import definitions as m

DEADLINE_S = 10  # any wait here; only reached when the host is broken


def embedder(name: str, dimensions: int = 8, **fields) -> ModelConfig:
    return ModelConfig(name=name, task="embedding", source="fake:", options={"dimensions": dimensions},
                       colocate="g", **fields)


def specs(*models: ModelConfig) -> list[dict]:
    return member_config(list(models))["members"]


class GatedLoads:
    """load(spec) for Members: the real load_backend, held for the names in `gates` until their event is set."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}

    def hold(self, name: str) -> threading.Event:
        self.started[name] = threading.Event()
        self.gates[name] = threading.Event()
        return self.gates[name]

    def __call__(self, spec: dict):
        if spec["name"] in self.gates:
            self.started[spec["name"]].set()
            assert self.gates[spec["name"]].wait(DEADLINE_S), "the test never released this load"
        return load_backend(spec, self.data_dir)


@pytest.fixture
def loads(tmp_path):
    loads = GatedLoads(str(tmp_path))
    yield loads
    for gate in loads.gates.values():  # a failed test must not leave a worker thread waiting
        gate.set()


async def embed(members: Members, name: str, text: str = "hello") -> int:
    """The dimensions of `name`'s vector for one input."""
    results = await asyncio.wait_for(members.served(name, "embedding").embed_many([[text]]), DEADLINE_S)
    return results[0].vectors.shape[1]


async def settled(members: Members) -> dict:
    await asyncio.wait_for(members.idle(), DEADLINE_S)
    return {name: state["status"] for name, state in members.states().items()}


async def test_a_member_added_loads_while_the_others_keep_answering(loads):
    members = Members(loads)
    members.want(specs(embedder("a")))
    assert await settled(members) == {"a": "ready"}
    gate = loads.hold("b")
    members.want(specs(embedder("a"), embedder("b", 16)))
    assert members.states()["b"]["status"] == "loading"
    assert await asyncio.to_thread(loads.started["b"].wait, DEADLINE_S)
    assert [await embed(members, "a") for _ in range(3)] == [8, 8, 8]  # answered while b loads
    with pytest.raises(ModelUnavailableError) as loading:
        members.served("b", "embedding")
    assert loading.value.code == "model_loading"
    gate.set()
    assert await settled(members) == {"a": "ready", "b": "ready"}
    assert await embed(members, "b") == 16


async def test_a_changed_member_answers_with_its_old_spec_until_the_new_one_is_loaded(loads):
    members = Members(loads)
    members.want(specs(embedder("a")))
    await settled(members)
    gate = loads.hold("a")
    members.want(specs(embedder("a", 32)))
    assert members.states()["a"] == {"status": "loading", "error": None, "key": spec_key(specs(embedder("a", 32))[0])}
    assert await embed(members, "a") == 8
    gate.set()
    assert await settled(members) == {"a": "ready"}
    assert await embed(members, "a") == 32


async def test_a_removed_member_is_dropped_and_its_queue_gauge_goes(loads):
    members = Members(loads)
    members.want(specs(embedder("a"), embedder("gone")))
    await settled(members)
    assert m.REGISTRY.get_sample_value("openserve:batch_queue_depth", {"model": "gone"}) == 0
    members.want(specs(embedder("a")))
    assert await settled(members) == {"a": "ready"}
    with pytest.raises(ModelNotFoundError):
        members.served("gone", "embedding")
    assert m.REGISTRY.get_sample_value("openserve:batch_queue_depth", {"model": "gone"}) is None
    assert await embed(members, "a") == 8


async def test_a_member_whose_load_fails_is_failed_alone(loads):
    broken = ModelConfig(name="broken", task="embedding", source="fake:", options={"no_such_option": 1},
                         colocate="g")
    members = Members(loads)
    members.want(specs(embedder("a"), broken))
    assert await settled(members) == {"a": "ready", "broken": "failed"}
    assert members.states()["broken"]["error"].startswith("TypeError: ")
    with pytest.raises(ModelUnavailableError) as failed:
        members.served("broken", "embedding")
    assert failed.value.code == "model_load_failed" and "TypeError" in failed.value.message
    assert await embed(members, "a") == 8


async def test_a_member_removed_while_it_loads_is_not_served_after_its_load(loads):
    members = Members(loads)
    gate = loads.hold("b")
    members.want(specs(embedder("a"), embedder("b")))
    assert await asyncio.to_thread(loads.started["b"].wait, DEADLINE_S)
    members.want(specs(embedder("a")))
    gate.set()
    assert await settled(members) == {"a": "ready"}
    with pytest.raises(ModelNotFoundError):
        members.served("b", "embedding")


async def test_the_host_dispatches_each_call_to_the_named_model(monkeypatch, tmp_path):
    monkeypatch.setattr(host_module, "place_replica", lambda spec, report_to: spec)
    replica = ModelHost.func_or_class("g", str(tmp_path))
    image = ModelConfig(name="i", task="image", source="fake:", colocate="g")
    speech = ModelConfig(name="s", task="speech", source="fake:", colocate="g")
    await replica.reconfigure(member_config([embedder("e", 4), image, speech]))
    await asyncio.wait_for(replica.members.idle(), DEADLINE_S)
    assert {n: s["status"] for n, s in (await replica.member_states()).items()} == {n: "ready" for n in "eis"}
    vectors = await asyncio.wait_for(replica.embed_many([["x"], ["y", "z"]], model="e"), DEADLINE_S)
    assert [r.vectors.shape for r in vectors] == [(1, 4), (2, 4)]
    params = ImageParams(width=8, height=8, num_inference_steps=1, guidance_scale=1.0, seed=1)
    pngs = await asyncio.wait_for(replica.generate("a cat", params, 2, model="i"), DEADLINE_S)
    assert [png[:4] for png in pngs] == [b"\x89PNG"] * 2
    audio = await asyncio.wait_for(replica.synthesize("hi", SpeechParams(voice="fake"), "wav", model="s"), DEADLINE_S)
    assert audio.data[:4] == b"RIFF"
    with pytest.raises(ModelNotFoundError):  # a model it does not hold
        await replica.embed_many([["x"]], model="elsewhere")
    with pytest.raises(ModelNotFoundError):  # one it holds, asked for another task
        await replica.embed_many([["x"]], model="i")


def test_a_group_reserves_the_largest_need_and_adds_up_its_bounds():
    small = embedder("a", resources={"num_cpus": 0.25, "custom": {"tpu": 1}}, max_ongoing_requests=8)
    large = embedder("b", resources={"num_cpus": 0.5, "num_gpus": 0.5, "custom": {"tpu": 0.5, "x": 2}},
                     max_ongoing_requests=4, max_queued_requests=10)
    assert group_actor_options([small, large]) == {"num_cpus": 0.5, "num_gpus": 0.5,
                                                   "resources": {"tpu": 1, "x": 2}}
    options = group_options("g", [large, small])
    assert (options["name"], options["max_ongoing_requests"], options["max_queued_requests"]) == ("group:g", 12, 18)
    assert [m["name"] for m in options["user_config"]["members"]] == ["a", "b"]  # sorted: one config per membership
    assert group_actor_options([small]) == group_actor_options([small, embedder("c")])  # 0.25 CPU each: no restart


def test_the_group_computes_on_its_largest_thread_count_or_every_core():
    assert compute_threads([{"torch_threads": 1}, {"torch_threads": 3}]) == 3
    assert compute_threads([{"torch_threads": 1}, {"torch_threads": None}]) == len(os.sched_getaffinity(0))


def test_a_member_that_reserved_no_gpu_computes_on_the_cpu_beside_one_that_did():
    cpu, gpu = specs(embedder("cpu"), embedder("gpu", resources={"num_gpus": 0.5}))
    assert own_device(cpu)["device"] == "cpu"
    assert own_device(gpu)["device"] == "auto"  # the replica's placement makes it `cuda` (it has the GPU share)
    assert own_device({**cpu, "device": "cuda"})["device"] == "cuda"  # asked for: kept
