"""Build a modality's backend from a resolved source. The one place that knows which class serves what."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from models.errors import DeviceUnavailableError
from models.sources import ResolvedSource, SourceError


def pick_device(device: str, num_gpus: float = 0.0) -> str:
    """The device a model runs on: "cpu" for `device: cpu`, and for `auto` with no GPU reserved (num_gpus 0: a
    replica that reserved no GPU must not land on GPU 0 beside one that did); "cuda" when the model asks for a GPU
    (`device: cuda` or num_gpus > 0), or DeviceUnavailableError saying why CUDA cannot be used, never a silent CPU."""
    if not wants_gpu(device, num_gpus):
        return "cpu"
    reason = cuda_unusable_reason()
    if reason is not None:
        asked = f"device: {device}" + (f", num_gpus: {num_gpus:g}" if num_gpus > 0 else "")
        raise DeviceUnavailableError(f"the model asks for a GPU ({asked}) but CUDA is not usable here: {reason}; "
                                     "set device: cpu and num_gpus: 0 to run it on the CPU")
    return "cuda"


def wants_gpu(device: str, num_gpus: float) -> bool:
    """Whether a model with these settings runs on a GPU (pick_device's rule, without torch)."""
    return device == "cuda" or (device == "auto" and num_gpus > 0)


def cuda_unusable_reason() -> str | None:
    """None when torch can run on a CUDA device here, else why not (in words an operator can act on)."""
    import torch

    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support; install a CUDA wheel of torch"
    if torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU{where}: no device, or a "
            "driver older than this CUDA build needs (nvidia-smi shows the driver's CUDA version)")


def chat_engine_config(src: ResolvedSource, options: dict[str, Any] | None, num_gpus: float = 0.0):
    """The typed options of a chat model from `src` (EngineConfig, or FakeEngineConfig for `fake:`); ValueError
    naming the key for an unknown or mistyped option. Cheap and without torch: run it when a model is registered.
    A replica given a fraction of a GPU (num_gpus < 1) uses that share of it unless options.gpu_memory_share says."""
    from models.llm.config import EngineConfig, chat_engine_options

    options = chat_engine_options(options)
    if src.kind == "fake":
        from models.llm.fake import FakeEngineConfig

        return FakeEngineConfig.from_options(options)
    config = EngineConfig.from_options(options)
    if 0 < num_gpus < 1 and "gpu_memory_share" not in (options or {}):
        config = dataclasses.replace(config, gpu_memory_share=num_gpus)
    return config


def build_chat_engine(src: ResolvedSource, dtype: str, device: str, cache_dir: str, options: dict[str, Any],
                  num_gpus: float = 0.0):
    """An LLMEngine for a chat/completion model."""
    config = chat_engine_config(src, options, num_gpus)
    if src.kind == "fake":
        from models.llm.fake import FakeEngine

        return FakeEngine.from_config(config)
    if src.kind == "builtin":
        raise SourceError(f"builtin `{src.location}` is not a chat model")
    from models.llm.engine import HFEngine

    return HFEngine.load(src.location, gguf_file=src.file, dtype=dtype, device=pick_device(device, num_gpus),
                         cache_dir=os.path.join(cache_dir, "llm"), config=config)


def build_embedding_backend(src: ResolvedSource, dtype: str, device: str, cache_dir: str, options: dict[str, Any],
                  num_gpus: float = 0.0):
    if src.kind == "fake":
        from models.embeddings.fake import FakeEmbeddingBackend

        return FakeEmbeddingBackend(**options)
    if src.kind == "builtin" or src.file:
        raise SourceError(f"`{src.path}` is not a sentence-transformers model directory or hub id")
    from models.embeddings.sentence import SentenceEmbeddingBackend

    return SentenceEmbeddingBackend(src.location, device=pick_device(device, num_gpus), dtype=dtype, **options)


def build_image_backend(src: ResolvedSource, dtype: str, device: str, cache_dir: str, options: dict[str, Any],
                  num_gpus: float = 0.0):
    if src.kind == "fake":
        from models.images.fake import FakeImageBackend

        return FakeImageBackend(**options)
    from models.images.diffusers_backend import DiffusersImageBackend

    location = src.location
    if src.kind == "builtin":  # only tiny-random-sd today: built from configs on first use, then cached
        from models.images.tiny import build_tiny_pipeline

        location = build_tiny_pipeline(os.path.join(cache_dir, "images", src.location))
    return DiffusersImageBackend(location, device=pick_device(device, num_gpus), dtype=dtype, **options)


def build_speech_backend(src: ResolvedSource, dtype: str, device: str, cache_dir: str, options: dict[str, Any],
                  num_gpus: float = 0.0):
    if src.kind == "fake":
        from models.speech.fake import FakeSpeechBackend

        return FakeSpeechBackend(**options)
    if src.kind == "builtin":
        raise SourceError(f"builtin `{src.location}` is not a speech model")
    if src.path.endswith(".onnx"):  # a Piper voice: model.onnx beside model.onnx.json
        from models.speech.piper_backend import PiperSpeechBackend

        return PiperSpeechBackend(src.path, use_cuda=piper_uses_cuda(device, num_gpus), **options)
    from models.speech.vits_backend import VitsSpeechBackend

    return VitsSpeechBackend(src.location, device=pick_device(device, num_gpus), **options)


def piper_uses_cuda(device: str, num_gpus: float) -> bool:
    """Piper runs on onnxruntime, not torch: on its CUDA provider when the model asks for a GPU (as pick_device),
    DeviceUnavailableError when onnxruntime-gpu is not installed (onnxruntime would quietly run on the CPU)."""
    if not wants_gpu(device, num_gpus):
        return False
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise DeviceUnavailableError(f"the Piper voice asks for a GPU (device: {device}, num_gpus: {num_gpus:g}) but "
                                     f"onnxruntime offers only {', '.join(providers)}; install onnxruntime-gpu")
    return True


BUILDERS = {
    "chat": build_chat_engine,
    "embedding": build_embedding_backend,
    "image": build_image_backend,
    "speech": build_speech_backend,
}


def build_backend(task: str, src: ResolvedSource, dtype: str, device: str, cache_dir: str, options: dict[str, Any],
                  num_gpus: float = 0.0):
    """The backend (or LLM engine) for `task` from `src` on pick_device(device, num_gpus); raises SourceError when
    the pair makes no sense, DeviceUnavailableError when the model asks for a GPU that cannot be used."""
    return BUILDERS[task](src, dtype, device, cache_dir, dict(options), num_gpus)
