"""Batched deployments: results split back per call, and one bad input fails only its own call."""
import numpy as np
import pytest

from models.embeddings.fake import FakeEmbeddingBackend
from models.errors import ModelInputError
from serving.deployments.common import ItemError, item_result, run_batch_isolated
from serving.deployments.embedding import embed_calls


def test_embed_calls_splits_per_call_and_matches_single_calls():
    backend = FakeEmbeddingBackend(dimensions=8)
    calls = [["a b", "c"], [[5, 6, 7]], ["d"]]
    batched = embed_calls(backend, calls)
    assert [r.vectors.shape for r in batched] == [(2, 8), (1, 8), (1, 8)]
    for call, result in zip(calls, batched):
        alone = embed_calls(backend, [call])[0]
        np.testing.assert_allclose(result.vectors, alone.vectors)
        assert result.prompt_tokens == alone.prompt_tokens


def double_unless_negative(items):
    if any(x < 0 for x in items):
        raise ModelInputError(f"negative input in {items}", param="input")
    return [2 * x for x in items]


def test_one_bad_item_fails_alone():
    out = run_batch_isolated(double_unless_negative, [1, -1, 3])
    assert out[0] == 2 and out[2] == 6
    assert isinstance(out[1], ItemError)
    with pytest.raises(ModelInputError) as e:  # raised as it is: the error map makes it a 400
        item_result(out[1])
    assert e.value.param == "input" and "[-1]" in e.value.message


def test_good_batch_runs_once():
    calls = []
    run = lambda items: calls.append(items) or [x for x in items]  # noqa: E731
    assert run_batch_isolated(run, [1, 2]) == [1, 2] and calls == [[1, 2]]
