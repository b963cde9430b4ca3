"""GPU memory by share, on CPU: the real configs of 7-8B and 1B models on H100 80 GB / H200 141 GB, with
torch.cuda's memory queries patched: budgets, slots and 16-token blocks, and two tenants at 0.5 within the device."""
import pytest
import torch
import transformers as tf

from models.llm import gpu_memory
from models.llm.gpu_memory import GIB, GpuMemoryPlan, activation_reserve_of, kv_budget_for_share
from models.llm.kv_cache import KVShape, default_kv_budget_bytes

# Bytes torch.cuda.mem_get_info reports as total on each device.
DEVICES = {"H100-80GB": 81559 * 2**20, "H200-141GB": 143771 * 2**20}

CONFIGS = {  # the models' config.json fields that size them, as published
    "Llama-3.1-8B": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=131072, tie_word_embeddings=False)),
    "Qwen2.5-7B": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, max_position_embeddings=131072, tie_word_embeddings=False)),
    "Mistral-7B-v0.3": (tf.MistralConfig, tf.MistralForCausalLM, dict(
        vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=32768, sliding_window=None, tie_word_embeddings=False)),
    "Llama-3.2-1B": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, tie_word_embeddings=True)),
}
# Published parameter counts (billions) and KV bytes per token in bf16 (2 x layers x kv heads x head dim x 2).
PARAMS_B = {"Llama-3.1-8B": 8.03, "Qwen2.5-7B": 7.62, "Mistral-7B-v0.3": 7.25, "Llama-3.2-1B": 1.24}
KV_PER_TOKEN = {"Llama-3.1-8B": 131072, "Qwen2.5-7B": 57344, "Mistral-7B-v0.3": 131072, "Llama-3.2-1B": 32768}


@pytest.fixture(scope="module")
def models():
    """{name: (config, bf16 weight bytes)}, the weights counted on a meta-device model (nothing allocated)."""
    out = {}
    for name, (config_class, model_class, fields) in CONFIGS.items():
        config = config_class(**fields)
        with torch.device("meta"):
            model = model_class(config)
        out[name] = (config, 2 * sum(p.numel() for p in model.parameters()))
    return out


def plan(config, weights, total, share, free=None, tokens=4096, running=64):
    reserve = activation_reserve_of(config, tokens, running, torch.bfloat16)
    return GpuMemoryPlan(total=total, share=share, weights=weights, reserve=reserve,
                         free=total - weights if free is None else free)


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_budgets_and_block_counts_of_real_models(models, name, device):
    config, weights = models[name]
    total = DEVICES[device]
    assert weights / 2e9 == pytest.approx(PARAMS_B[name], rel=0.01)
    per_token = KVShape.of(config).bytes_per_token(torch.bfloat16)
    assert per_token == KV_PER_TOKEN[name]
    for share in (0.9, 0.5):
        p = plan(config, weights, total, share)
        assert p.weights + p.reserve + p.kv_bytes == p.limit <= total * share  # the share is spent, not exceeded
        assert GIB < p.reserve < 6 * GIB  # context + one 4096-token step of activations and logits
        slots, blocks = p.kv_bytes // (8192 * per_token), p.kv_bytes // (16 * per_token)
        assert blocks == p.kv_bytes // per_token // 16 and blocks >= 512 * slots
        # Every model fits at least 8 full 8192-token sequences in its share, even a 8B model at half an H100.
        assert slots >= 8, (name, device, share, slots)
    if name == "Llama-3.1-8B":
        assert 8192 * per_token == GIB  # the "1 GiB per slot"
        at_half_h100 = plan(config, weights, DEVICES["H100-80GB"], 0.5)
        assert 19 <= at_half_h100.kv_bytes // GIB <= 22  # 40 GiB - 15 GiB weights - ~3.6 GiB reserve


def test_two_tenants_at_half_never_exceed_the_device_whichever_loads_first(models):
    total = DEVICES["H100-80GB"]
    (cfg_a, w_a), (cfg_b, w_b) = models["Llama-3.1-8B"], models["Llama-3.2-1B"]
    first = plan(cfg_a, w_a, total, 0.5, free=total - w_a)  # A loads onto an empty device
    used_by_a = first.weights + first.reserve + first.kv_bytes
    second = plan(cfg_b, w_b, total, 0.5, free=total - used_by_a - w_b)  # B loads after A took its share
    assert used_by_a + second.weights + second.reserve + second.kv_bytes <= total
    assert second.kv_bytes == second.limit - second.weights - second.reserve  # B is bound by its share, not by A
    greedy = plan(cfg_b, w_b, total, 1.0, free=total - used_by_a - w_b)  # a tenant asking for all: capped by free
    assert used_by_a + greedy.weights + greedy.reserve + greedy.kv_bytes <= total


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's memory queries on an H100 holding 15 GiB of weights, and a record of the fractions set."""
    state = {"free": DEVICES["H100-80GB"] - 15 * GIB, "allocated": 15 * GIB, "fractions": []}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], DEVICES["H100-80GB"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: state["fractions"].append(fraction))
    return state


def test_the_engine_budget_on_cuda_comes_from_the_share_and_enforces_it(fake_cuda):
    cuda = torch.device("cuda")
    budget = default_kv_budget_bytes(cuda, None, gpu_share=0.5, reserve=3 * GIB)
    assert budget == int(DEVICES["H100-80GB"] * 0.5) - 18 * GIB and fake_cuda["fractions"] == [0.5]
    assert default_kv_budget_bytes(cuda, 4.0, gpu_share=0.25) == 4 * GIB and fake_cuda["fractions"][-1] == 0.25
    with pytest.raises(ValueError, match="cannot hold the weights"):
        kv_budget_for_share(cuda, 0.2, 3 * GIB)  # 15.9 GiB < 15 GiB weights + 3 GiB reserve
    assert fake_cuda["fractions"] == [0.5, 0.25]  # a refused share is not enforced
    with pytest.raises(ValueError, match="gpu_memory_share"):
        gpu_memory.plan_for_device(cuda, 1.5, 0)
