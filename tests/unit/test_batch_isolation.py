"""Batched deployments: results split back per call, and whatever one item raises fails only its own call."""
import asyncio
import logging
import pickle

import numpy as np
import pytest

from models.embeddings.fake import FakeEmbeddingBackend
from models.errors import ModelInputError
from models.images.fake import FakeImageBackend
from models.images.types import ImageParams
from serving.config import ModelConfig
from serving.deployments import image as image_deployment
from serving.deployments.common import ItemError, item_result, run_batch_isolated
from serving.deployments.embedding import embed_calls
from serving.errors import ModelExecutionError, ModelUnavailableError, ServingError


def test_embed_calls_splits_per_call_and_matches_single_calls():
    backend = FakeEmbeddingBackend(dimensions=8)
    calls = [["a b", "c"], [[5, 6, 7]], ["d"]]
    batched = embed_calls(backend, calls)
    assert [r.vectors.shape for r in batched] == [(2, 8), (1, 8), (1, 8)]
    for call, result in zip(calls, batched):
        alone = embed_calls(backend, [call])[0]
        np.testing.assert_allclose(result.vectors, alone.vectors)
        assert result.prompt_tokens == alone.prompt_tokens


def double_unless_bad(items):
    """2x each item; a negative item is an input error, "crash" a bug of the backend, "oom" out of memory."""
    if any(x == "crash" for x in items):
        raise ValueError("Overflow when unpacking long long")
    if any(x == "oom" for x in items):
        raise MemoryError()
    if any(x < 0 for x in items):
        raise ModelInputError(f"negative input in {items}", param="input")
    return [2 * x for x in items]


def raised_by(result) -> BaseException:
    with pytest.raises(Exception) as e:
        item_result(result)
    return e.value


def test_one_bad_input_fails_alone_with_its_own_model_input_error():
    out = run_batch_isolated(double_unless_bad, [1, -1, 3])
    assert out[0] == 2 and out[2] == 6 and isinstance(out[1], ItemError)
    error = raised_by(out[1])
    assert type(error) is ModelInputError  # not converted: serving/api/errors.py maps it to 400
    assert error.param == "input" and "[-1]" in error.message


def test_any_exception_of_one_item_fails_only_that_item_as_a_typed_500_logged_once(caplog):
    with caplog.at_level(logging.ERROR, logger="serving.deployments"):
        out = run_batch_isolated(double_unless_bad, [1, "crash", 3], model="m")
    assert out[0] == 2 and out[2] == 6
    error = raised_by(out[1])
    assert isinstance(error, ModelExecutionError) and error.status_code == 500
    assert error.message == "The model `m` failed on this request (ValueError); the server log has the details."
    assert [r.exc_info[0] for r in caplog.records] == [ValueError]


def test_a_backend_failure_fails_every_item_and_is_logged_once_per_pass(caplog):
    def broken(items):
        raise RuntimeError("CUDA error: device-side assert triggered")

    with caplog.at_level(logging.ERROR, logger="serving.deployments"):
        out = run_batch_isolated(broken, [1, 2, 3, 4])
    assert all(isinstance(raised_by(r), ModelExecutionError) for r in out)
    assert len(caplog.records) == 1


def test_out_of_memory_is_a_503_with_retry_after():
    error = raised_by(run_batch_isolated(double_unless_bad, ["oom"])[0])
    assert isinstance(error, ModelUnavailableError) and error.status_code == 503
    assert error.headers() == {"Retry-After": "5"}


def test_typed_serving_errors_pass_through_as_they_are():
    def refuses(items):
        raise ModelUnavailableError("warming up", retry_after=2)

    error = raised_by(run_batch_isolated(refuses, [1])[0])
    assert isinstance(error, ServingError) and error.message == "warming up"


def test_good_batch_runs_once():
    calls = []
    run = lambda items: calls.append(items) or [x for x in items]  # noqa: E731
    assert run_batch_isolated(run, [1, 2]) == [1, 2] and calls == [[1, 2]]


@pytest.mark.parametrize("seed", [2**70, 2**64, -(2**63) - 1])
async def test_an_image_seed_outside_torchs_range_is_the_requests_own_input_error(monkeypatch, seed):
    model = ModelConfig(name="img", task="image", source="fake:", batching={"max_batch_size": 8})
    monkeypatch.setattr(image_deployment, "load_backend", lambda spec, data_dir: (model, FakeImageBackend()))
    replica = image_deployment.ImageDeployment.func_or_class(model.model_dump(), "/unused")
    ok = ImageParams(width=8, height=8, num_inference_steps=1, guidance_scale=1.0, seed=1)
    bad = ImageParams(width=8, height=8, num_inference_steps=1, guidance_scale=1.0, seed=seed)
    good, refused = await asyncio.wait_for(
        asyncio.gather(replica.generate("a cat", ok, 2), replica.generate("a dog", bad, 1), return_exceptions=True),
        10,
    )
    assert [png[:4] for png in good] == [b"\x89PNG"] * 2
    assert type(refused) is ModelInputError and refused.param == "seed"


def all_serving_errors(cls=ServingError) -> list[type]:
    return [cls] + [sub for child in cls.__subclasses__() for sub in all_serving_errors(child)]


@pytest.mark.parametrize("cls", all_serving_errors(), ids=lambda c: c.__name__)
def test_every_typed_error_survives_the_trip_across_ray(cls):
    """A replica's error reaches the ingress pickled; one that cannot be rebuilt would arrive as a bare 500."""
    error = cls("what happened", code="some_code")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.message, again.code, again.headers()) == (cls, "what happened", "some_code",
                                                                         error.headers())


async def test_pngs_are_encoded_after_the_batch_pass_not_inside_it(monkeypatch):
    """The merger runs one pass at a time: PNG encoding inside the pass would hold back the pipeline's next batch."""
    model = ModelConfig(name="img", task="image", source="fake:", batching={"max_batch_size": 8})
    events = []
    real_png = image_deployment.to_png
    monkeypatch.setattr(image_deployment, "to_png", lambda im: events.append("png") or real_png(im))
    monkeypatch.setattr(image_deployment, "load_backend", lambda spec, data_dir: (model, FakeImageBackend()))
    replica = image_deployment.ImageDeployment.func_or_class(model.model_dump(), "/unused")
    run = replica.served.merger.run
    replica.served.merger.run = lambda items: (events.append("pass"), run(items), events.append("pass done"))[1]
    params = ImageParams(width=8, height=8, num_inference_steps=1, guidance_scale=1.0, seed=1)
    pngs = await asyncio.wait_for(replica.generate("a cat", params, 3), 10)
    assert [png[:4] for png in pngs] == [b"\x89PNG"] * 3
    assert events == ["pass", "pass done", "png", "png", "png"]
