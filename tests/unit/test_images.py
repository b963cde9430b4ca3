"""Image backends: the tiny diffusers pipeline through DiffusersImageBackend, and the fake."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from models.errors import ModelInputError
from models.images.fake import FakeImageBackend, fake_colour
from models.images.types import ImageParams


def _params(width=64, height=64, seed=None, negative_prompt=None, steps=2, guidance=7.5):
    return ImageParams(width, height, steps, guidance, seed=seed, negative_prompt=negative_prompt)


def _diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from models.images.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd") / "pipe")


@pytest.fixture(scope="module")
def backend(pipeline_dir):
    from models.images.diffusers_backend import DiffusersImageBackend

    return DiffusersImageBackend(pipeline_dir, default_steps=2)


class _CountingPipeline:
    """Wraps a pipeline and records the batch size of each call."""

    def __init__(self, pipeline):
        self.pipeline, self.batches = pipeline, []

    def __call__(self, **kwargs):
        self.batches.append(len(kwargs["prompt"]))
        return self.pipeline(**kwargs)


# --- tiny pipeline builder ---


def test_tiny_pipeline_builds_deterministically_and_only_once(tmp_path, pipeline_dir):
    from models.images.tiny import build_tiny_pipeline

    again = Path(build_tiny_pipeline(tmp_path / "again"))
    files = sorted(p.relative_to(pipeline_dir) for p in Path(pipeline_dir).rglob("*") if p.is_file())
    assert any(f.suffix == ".safetensors" for f in files)
    for f in files:
        assert (again / f).read_bytes() == (Path(pipeline_dir) / f).read_bytes(), f
    stamp = (again / "model_index.json").stat().st_mtime_ns
    assert build_tiny_pipeline(again) == str(again)
    assert (again / "model_index.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temp dir left behind


# --- DiffusersImageBackend on the tiny pipeline ---


def test_backend_defaults_come_from_the_pipeline(backend):
    assert backend.default_size == (64, 64)  # UNet sample_size 32 x VAE factor 2
    assert backend.default_steps == 2  # constructor override
    assert backend.default_guidance_scale == 7.5  # StableDiffusionPipeline.__call__ default
    assert backend.size_multiple == 8
    assert backend.max_pixels == 4 * 64 * 64


def test_a_request_without_steps_or_guidance_gets_the_models_own(backend, monkeypatch):
    """None in the request: the options' default_steps (2) and the pipeline's own guidance (7.5), not a fixed 30 /
    7.5 decided by the API layer (SDXL-turbo wants 1-4 steps, guidance 0: options say so)."""
    seen = []
    monkeypatch.setattr(backend, "_run", lambda prompts, params: seen.extend(params) or [None] * len(prompts))
    backend.generate(["a cat", "a dog"], [_params(steps=None, guidance=None), _params(steps=3, guidance=0.0)])
    assert [(p.num_inference_steps, p.guidance_scale) for p in seen] == [(2, 7.5), (3, 0.0)]


def test_backend_returns_images_of_the_requested_sizes(backend):
    sizes = [(64, 64), (32, 48), (96, 40)]
    images = backend.generate(["a cat"] * 3, [_params(w, h, seed=1) for w, h in sizes])
    assert [im.size for im in images] == sizes
    assert all(im.mode == "RGB" for im in images)


def test_seeded_requests_give_identical_images_and_seeds_matter(backend):
    first = backend.generate(["a cat", "a cat"], [_params(seed=7), _params(seed=7)])
    again = backend.generate(["a cat"], [_params(seed=7)])[0]
    other = backend.generate(["a cat"], [_params(seed=8)])[0]
    assert _diff(first[0], first[1]) == 0
    assert _diff(first[0], again) <= 1  # batch of 2 vs 1: float rounding may move a pixel value by one
    assert _diff(first[0], other) > 50
    unseeded = backend.generate(["a cat", "a cat"], [_params(), _params()])
    assert _diff(unseeded[0], unseeded[1]) > 50  # no seed: a fresh random one per image


def test_negative_prompt_changes_the_image(backend):
    plain, negative = backend.generate(["a cat"] * 2, [_params(seed=3), _params(seed=3, negative_prompt="blurry")])
    assert _diff(plain, negative) > 20


def test_requests_are_grouped_by_size_and_returned_in_input_order(backend):
    prompts = ["a cat", "a dog", "a fox", "a bird", "a fish"]
    params = [_params(64, 64, 1), _params(32, 48, 2), _params(64, 64, 3), _params(32, 48, 4)]
    params.append(_params(64, 64, 5, steps=1))
    counting = _CountingPipeline(backend.pipeline)
    backend.pipeline = counting
    try:
        batched = backend.generate(prompts, params)
    finally:
        backend.pipeline = counting.pipeline
    assert sorted(counting.batches) == [1, 2, 2]  # (64, 64, 2 steps) x2, (32, 48) x2, (64, 64, 1 step) x1
    singles = [backend.generate([p], [q])[0] for p, q in zip(prompts, params)]
    for i, image in enumerate(batched):
        assert image.size == (params[i].width, params[i].height)
        assert _diff(image, singles[i]) <= 1, i
        same_size_others = [j for j in range(len(singles)) if j != i and singles[j].size == image.size]
        assert all(_diff(image, singles[j]) > 20 for j in same_size_others)


@pytest.mark.parametrize(
    "prompt, params, param",
    [
        ("a cat", _params(60, 64), "size"),
        ("a cat", _params(0, 64), "size"),
        ("a cat", _params(256, 256), "size"),  # over max_pixels (4 x 64 x 64)
        ("", _params(), "prompt"),
        ("a cat", _params(steps=0), "num_inference_steps"),
    ],
)
def test_backend_rejects_bad_requests(backend, prompt, params, param):
    with pytest.raises(ModelInputError) as err:
        backend.generate([prompt], [params])
    assert err.value.param == param


# --- fake ---


def test_fake_is_deterministic_exact_size_and_documented():
    fake = FakeImageBackend()
    a, b, c = fake.generate(["a cat", "a cat", "a cat"], [_params(24, 16, 1), _params(24, 16, 1), _params(8, 8, 2)])
    assert a.size == (24, 16) and c.size == (8, 8) and a.mode == "RGB"
    assert _diff(a, b) == 0
    colour = fake_colour("a cat", 1)
    assert a.getpixel((0, 5)) == colour
    assert a.getpixel((23, 15)) == tuple(255 - x for x in colour)
    assert c.getpixel((0, 0)) == fake_colour("a cat", 2) != colour
    assert fake.calls == [3]


def test_fake_validates_like_the_real_backend():
    with pytest.raises(ModelInputError) as err:
        FakeImageBackend().generate(["x"], [_params(30, 64)])
    assert err.value.param == "size"
