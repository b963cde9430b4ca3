"""configs/gpu.example.yaml: it loads, its shares fit one GPU, every chat model's options are valid, and its KV
budgets hold the slots its comments say (KV geometry of the real model configs, written out here: no download)."""
import os

import torch

from models.llm.config import EngineConfig
from models.llm.kv_cache import KVShape, fit_num_slots
from serving.config import ModelConfig, load_config
from serving.deployments.serve_ops import max_ongoing_requests

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "gpu.example.yaml")
# (layers, kv heads, head dim) from each model's config.json, and the slots the example's comments promise.
KV_GEOMETRY = {"qwen2.5-7b-instruct": ((28, 4, 128), 64), "llama-3.2-1b-instruct": ((16, 8, 64), 64)}


def test_the_gpu_example_loads_and_its_shares_fit_one_gpu():
    models = {m.name: m for m in load_config(EXAMPLE).models}
    assert {m.task for m in models.values()} == {"chat", "image", "embedding"}
    assert all(m.resources.num_gpus > 0 for m in models.values())
    assert sum(m.resources.num_gpus for m in models.values()) <= 1.0
    assert max_ongoing_requests(models["llama-3.2-1b-instruct"]) == 256 + 256  # the engine's GPU defaults
    assert max_ongoing_requests(models["all-minilm-l6-v2"]) == 256


def test_the_chat_models_kv_budgets_hold_the_slots_the_comments_promise():
    models = {m.name: m for m in load_config(EXAMPLE).models}
    total_kv = 0.0
    for name, (geometry, slots) in KV_GEOMETRY.items():
        config = EngineConfig.from_options(models[name].options)
        assert config.strict and config.running_on("cuda") >= slots
        budget = int(config.kv_cache_gb * 2**30)
        assert fit_num_slots(KVShape(*geometry), config.running_on("cuda"), config.max_model_len, torch.bfloat16,
                             budget) == slots
        total_kv += config.kv_cache_gb
    assert total_kv + 15 + 2.5 + 7 < 70  # + bf16 weights of the 7B and the 1B, SDXL in fp16: room left on 80 GB


def test_a_chat_models_serve_concurrency_follows_its_engines_device_defaults():
    base = {"name": "m", "task": "chat", "source": "org/model"}
    assert max_ongoing_requests(ModelConfig.model_validate(base)) == 16 + 256  # CPU: the engine's 16 + 256
    assert max_ongoing_requests(ModelConfig.model_validate({**base, "resources": {"num_gpus": 0.5}})) == 512
    assert max_ongoing_requests(ModelConfig.model_validate({**base, "device": "cuda"})) == 512
    assert max_ongoing_requests(ModelConfig.model_validate({**base, "options": {"max_running": 8}})) == 8 + 256
    given = {**base, "resources": {"num_gpus": 1}, "max_ongoing_requests": 32}
    assert max_ongoing_requests(ModelConfig.model_validate(given)) == 32
