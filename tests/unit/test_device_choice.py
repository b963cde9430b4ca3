"""Which device a model runs on, and that a model asking for a GPU fails loudly without one (no silent CPU);
the per-device defaults and the `strict` option that makes a fallback from the fast path an error."""
import sys
import types

import pytest
import torch

from models.embeddings.sentence import _resolve_dtype as embedding_dtype
from models.errors import DeviceUnavailableError, FastPathError
from models.factory import build_backend, chat_engine_config, pick_device, piper_uses_cuda
from models.hub import _ignore_patterns
from models.llm import engine as engine_module
from models.llm.config import EngineConfig
from models.llm.engine import HFEngine
from models.llm.loader import load_causal_lm
from models.sources import resolve_source
from tests.fixtures.tiny_llm import build_tiny_llm


@pytest.fixture
def cuda_usable(monkeypatch):
    """Pretend torch is a CUDA build that sees a GPU (or not: `cuda_usable(False)`)."""
    def set_usable(usable: bool = True):
        monkeypatch.setattr(torch.version, "cuda", "12.8")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: usable)
    return set_usable


def test_num_gpus_zero_with_device_auto_runs_on_the_cpu_even_where_a_gpu_is_visible(cuda_usable):
    cuda_usable(True)
    assert pick_device("auto", 0) == "cpu" and pick_device("cpu", 1) == "cpu"
    assert pick_device("auto", 0.5) == "cuda" and pick_device("cuda", 0) == "cuda"


@pytest.mark.parametrize(("device", "num_gpus", "asked"), [("auto", 1, "device: auto, num_gpus: 1"),
                                                           ("cuda", 0, "device: cuda"),
                                                           ("auto", 0.5, "device: auto, num_gpus: 0.5")])
def test_a_model_asking_for_a_gpu_fails_with_the_reason_when_cuda_is_not_usable(cuda_usable, monkeypatch, device,
                                                                                 num_gpus, asked):
    cuda_usable(False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceUnavailableError) as info:
        pick_device(device, num_gpus)
    message = str(info.value)
    assert f"asks for a GPU ({asked})" in message and "CUDA is not usable here" in message
    assert "CUDA_VISIBLE_DEVICES=''" in message and "driver" in message and "device: cpu and num_gpus: 0" in message


def test_a_torch_build_without_cuda_is_named(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(DeviceUnavailableError, match=r"this torch build \(.*\) has no CUDA support"):
        pick_device("auto", 1)


def test_the_deploy_fails_before_loading_anything(cuda_usable, monkeypatch, tmp_path):
    import models.embeddings.sentence as sentence

    cuda_usable(False)
    loads = []
    monkeypatch.setattr(sentence, "SentenceEmbeddingBackend", lambda *a, **k: loads.append(a))
    with pytest.raises(DeviceUnavailableError):
        build_backend("embedding", resolve_source(str(tmp_path)), "auto", "auto", str(tmp_path), {}, num_gpus=1)
    assert loads == []
    build_backend("embedding", resolve_source(str(tmp_path)), "auto", "auto", str(tmp_path), {}, num_gpus=0)
    assert loads == [(str(tmp_path),)]  # num_gpus 0: built, on the CPU


def test_piper_takes_the_cuda_provider_only_when_asked_and_present(monkeypatch):
    fake_ort = types.SimpleNamespace(get_available_providers=lambda: ["CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_ort)
    assert piper_uses_cuda("auto", 0) is False and piper_uses_cuda("cpu", 1) is False
    with pytest.raises(DeviceUnavailableError, match="onnxruntime offers only CPUExecutionProvider; install "
                                                     "onnxruntime-gpu"):
        piper_uses_cuda("auto", 1)
    fake_ort.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert piper_uses_cuda("auto", 1) is True and piper_uses_cuda("cuda", 0) is True


def test_dtype_auto_is_half_precision_on_a_gpu_for_embeddings_too():
    assert embedding_dtype("auto", "cuda") == torch.float16 and embedding_dtype("auto", "cpu") == torch.float32


def test_hub_downloads_skip_pickled_checkpoints_beside_safetensors(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "list_repo_files",
                        lambda *a, **k: ["model.safetensors", "sd_xl_turbo_1.0.ckpt", "model.bin"])
    patterns = _ignore_patterns("org/repo", None, None, offline=False)
    assert "*.ckpt" in patterns and "*.bin" in patterns


def test_max_running_defaults_by_device_and_an_explicit_value_wins():
    assert (EngineConfig().running_on("cpu"), EngineConfig().running_on("cuda")) == (16, 256)
    assert EngineConfig(max_running=8).running_on("cuda") == 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_causal_lm(build_tiny_llm(str(tmp_path_factory.mktemp("tiny_llm"))), dtype="float32")


def test_a_failed_probe_falls_back_with_a_warning_or_fails_the_load_when_strict(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(engine_module, "probe_slot_attention", lambda model, vocab: "an unusual attention")
    engine = HFEngine(model, tok, EngineConfig())
    stats = engine.stats()
    assert (stats.batched, stats.device, stats.cuda_graphs_on, engine.max_running) == (False, "cpu", False, 16)
    with pytest.raises(FastPathError, match=r"batched engine is unavailable \(an unusual attention\).*strict"):
        HFEngine(model, tok, EngineConfig(strict=True))


def test_a_replica_with_a_gpu_share_budgets_that_share_of_the_device():
    src = resolve_source("hf:org/llama")
    assert chat_engine_config(src, {}, num_gpus=0.5).gpu_memory_share == 0.5  # Serve's num_gpus: its share
    assert chat_engine_config(src, {"gpu_memory_share": 0.3}, num_gpus=0.5).gpu_memory_share == 0.3  # said outright
    assert chat_engine_config(src, {}, num_gpus=1).gpu_memory_share == chat_engine_config(src, {}).gpu_memory_share
