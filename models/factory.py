"""Build a modality's backend from a resolved source. The one place that knows which class serves what."""
from __future__ import annotations

import os
from typing import Any

from models.sources import ResolvedSource, SourceError


def pick_device(device: str) -> str:
    """'auto' means CUDA when present, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def chat_engine_config(src: ResolvedSource, options: dict[str, Any] | None):
    """The typed options of a chat model from `src` (EngineConfig, or FakeEngineConfig for `fake:`); ValueError
    naming the key for an unknown or mistyped option. Cheap and without torch: run it when a model is registered."""
    if src.kind == "fake":
        from models.llm.fake import FakeEngineConfig

        return FakeEngineConfig.from_options(options)
    from models.llm.config import EngineConfig

    return EngineConfig.from_options(options)


def build_chat_engine(src: ResolvedSource, dtype: str, device: str, cache_dir: str, options: dict[str, Any]):
    """An LLMEngine for a chat/completion model."""
    config = chat_engine_config(src, options)
    if src.kind == "fake":
        from models.llm.fake import FakeEngine

        return FakeEngine.from_config(config)
    if src.kind == "builtin":
        raise SourceError(f"builtin `{src.location}` is not a chat model")
    from models.llm.engine import HFEngine

    return HFEngine.load(src.location, gguf_file=src.file, dtype=dtype, device=pick_device(device),
                         cache_dir=os.path.join(cache_dir, "llm"), config=config)


def build_embedding_backend(src: ResolvedSource, dtype: str, device: str, cache_dir: str, options: dict[str, Any]):
    if src.kind == "fake":
        from models.embeddings.fake import FakeEmbeddingBackend

        return FakeEmbeddingBackend(**options)
    if src.kind == "builtin" or src.file:
        raise SourceError(f"`{src.path}` is not a sentence-transformers model directory or hub id")
    from models.embeddings.sentence import SentenceEmbeddingBackend

    return SentenceEmbeddingBackend(src.location, device=pick_device(device), dtype=dtype, **options)


def build_image_backend(src: ResolvedSource, dtype: str, device: str, cache_dir: str, options: dict[str, Any]):
    if src.kind == "fake":
        from models.images.fake import FakeImageBackend

        return FakeImageBackend(**options)
    from models.images.diffusers_backend import DiffusersImageBackend

    location = src.location
    if src.kind == "builtin":  # only tiny-random-sd today: built from configs on first use, then cached
        from models.images.tiny import build_tiny_pipeline

        location = build_tiny_pipeline(os.path.join(cache_dir, "images", src.location))
    return DiffusersImageBackend(location, device=pick_device(device), dtype=dtype, **options)


def build_speech_backend(src: ResolvedSource, dtype: str, device: str, cache_dir: str, options: dict[str, Any]):
    if src.kind == "fake":
        from models.speech.fake import FakeSpeechBackend

        return FakeSpeechBackend(**options)
    if src.kind == "builtin":
        raise SourceError(f"builtin `{src.location}` is not a speech model")
    if src.path.endswith(".onnx"):  # a Piper voice: model.onnx beside model.onnx.json
        from models.speech.piper_backend import PiperSpeechBackend

        return PiperSpeechBackend(src.path, **options)
    from models.speech.vits_backend import VitsSpeechBackend

    return VitsSpeechBackend(src.location, device=pick_device(device), **options)


BUILDERS = {
    "chat": build_chat_engine,
    "embedding": build_embedding_backend,
    "image": build_image_backend,
    "speech": build_speech_backend,
}


def build_backend(task: str, src: ResolvedSource, dtype: str, device: str, cache_dir: str, options: dict[str, Any]):
    """The backend (or LLM engine) for `task` from `src`; raises SourceError when the pair makes no sense."""
    return BUILDERS[task](src, dtype, device, cache_dir, dict(options))
