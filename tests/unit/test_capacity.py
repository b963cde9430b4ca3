"""Room checks: what one replica asks against each node's total (never fits) and free resources (not now)."""
from serving.config import ModelConfig
from serving.registry.checks import NodeResources, capacity_problem, resources_problem
from tests.registry_fakes import node


def spec(**kw) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "task": "embedding", "source": "fake:", **kw})


def test_the_readme_case_names_what_was_asked_and_what_is_free():
    problem = capacity_problem(spec(resources={"num_cpus": 0.5}), [node(2.0, free=0.1)])
    assert problem == ("asks 0.5 CPU, but Ray does not have that free now: the node with the most free has 0.1 CPU "
                       "free (of 2 CPU); undeploy a model or lower resources.num_cpus")
    assert capacity_problem(spec(resources={"num_cpus": 0.5}), [node(2.0, free=0.5)]) is None


def test_replicas_are_placed_one_by_one_over_the_nodes():
    two = spec(num_replicas=2, resources={"num_cpus": 0.6})
    assert capacity_problem(two, [node(2.0, free=1.0), node(1.0, free=0.7)]) is None  # one on each
    problem = capacity_problem(two, [node(2.0, free=1.0), node(1.0, free=0.5)])
    assert problem.startswith("asks 2 replicas of 0.6 CPU, of which 1 fit") and problem.endswith("or the replicas")


def test_fractional_gpus_pack_and_the_fifth_share_is_refused():
    half = spec(resources={"num_cpus": 0.1, "num_gpus": 0.5})
    gpus = NodeResources(total={"CPU": 2, "GPU": 2}, free={"CPU": 2, "GPU": 0.5})
    assert capacity_problem(half, [gpus]) is None
    full = NodeResources(total={"CPU": 2, "GPU": 2}, free={"CPU": 1.6})  # Ray leaves out resources at zero
    assert capacity_problem(half, [full]) == (
        "asks 0.5 GPU and 0.1 CPU, but Ray does not have that free now: the node with the most free has 0 GPU free "
        "(of 2 GPU); undeploy a model or lower resources.num_gpus")


def test_a_model_that_scales_to_zero_needs_no_room_to_deploy_but_must_fit_some_node():
    zero = spec(resources={"num_gpus": 1}, autoscaling={"min_replicas": 0, "max_replicas": 2})
    assert capacity_problem(zero, [node(2.0, free=0.0)]) is None
    assert resources_problem(zero, [node(2.0)]) == (
        "one replica asks 1 GPU and 0.25 CPU, but no Ray node has that much: the largest has 0 GPU; lower "
        "resources.num_gpus or add a node that has them")


def test_custom_resources_must_exist_on_some_node():
    special = spec(resources={"num_cpus": 0.1, "custom": {"special": 1}})
    assert resources_problem(special, [node(2.0), node(1.0, special=1.0)]) is None
    problem = resources_problem(special, [node(2.0)])
    assert "asks 1 special and 0.1 CPU" in problem and "lower resources.custom.special" in problem


def test_an_update_counts_what_the_model_holds_today_as_free():
    today, bigger = spec(resources={"num_cpus": 0.5}), spec(resources={"num_cpus": 0.8})
    assert capacity_problem(bigger, [node(2.0, free=0.3)], released=today) is None
    assert capacity_problem(bigger, [node(2.0, free=0.2)], released=today) is not None
