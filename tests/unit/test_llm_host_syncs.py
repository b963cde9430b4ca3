"""At most one host transfer per decode step: the batched runner's forward and the sampler at 256 rows, on tiny
random Llama-3 RoPE, Qwen2, Mistral (sliding window) and Phi-3 longrope models, run under a detector that raises
on every op that makes the host wait for the device and counts every transfer to the host.

On the CPU nothing waits, so the detector looks for the ops that would: `.item()`, `float(t)`, `if t:` and friends
(aten._local_scalar_dense, aten.is_nonzero), `nonzero` and other ops of data-dependent shape, indexing with a
boolean mask, copies to a device that wait for it; and it counts `.tolist()` / `.numpy()` calls and copies from a
device to the CPU.
"""
from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch.utils._python_dispatch import TorchDispatchMode

from models.llm.config import EngineConfig
from models.llm.engine import HFEngine
from models.llm.fake import FakeTokenizer
from models.llm.types import SamplingParams

aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.nonzero, aten.nonzero_static,
            aten.masked_select, aten._unique2, aten.unique_dim, aten.unique_consecutive, aten.equal}


class HostSync(AssertionError):
    """An op that makes the host wait for the device ran where none may."""


class HostSyncDetector(TorchDispatchMode):
    """Raises HostSync on ops that wait for the device; counts transfers to the host (`transfers`)."""

    def __init__(self):
        super().__init__()
        self.transfers = 0
        self._patched = {}

    def __enter__(self):
        for name in ("tolist", "numpy"):  # on the CPU these read memory without dispatching an op: count them here
            original = getattr(torch.Tensor, name)
            self._patched[name] = original
            setattr(torch.Tensor, name, self._counting(original))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._patched.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)

    def _counting(self, original):
        def counted(tensor, *args, **kwargs):
            self.transfers += 1
            return original(tensor, *args, **kwargs)
        return counted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in SYNC_OPS or _boolean_index(func, args) or _blocking_upload(func, args, kwargs):
            raise HostSync(f"{func} makes the host wait for the device")
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (aten._to_copy, aten.copy_) and _device_to_host(args, out):
            self.transfers += 1
        return out


def _boolean_index(func, args) -> bool:
    """Indexing with a boolean mask: the kernel runs nonzero inside, out of the mode's sight."""
    if func.overloadpacket not in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _blocking_upload(func, args, kwargs) -> bool:
    """A copy from the CPU to a device that waits for the device (pageable memory, non_blocking=False)."""
    kwargs = kwargs or {}
    if func.overloadpacket is aten._to_copy:
        target = kwargs.get("device")
        return (args[0].device.type == "cpu" and target is not None and torch.device(target).type != "cpu"
                and not kwargs.get("non_blocking", False))
    if func.overloadpacket is aten.copy_:
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        return args[0].device.type != "cpu" and args[1].device.type == "cpu" and not non_blocking
    return False


def _device_to_host(args, out) -> bool:
    source = next((a for a in args if isinstance(a, torch.Tensor)), None)
    return (isinstance(out, torch.Tensor) and out.device.type == "cpu" and source is not None
            and source.device.type != "cpu")


def test_the_detector_catches_syncs_and_counts_transfers():
    t = torch.arange(6.0)
    for sync in (lambda: t[0].item(), lambda: float(t.sum()), lambda: bool(t[1] > 0), lambda: t[t > 2],
                 lambda: int(t.argmax()), lambda: torch.nonzero(t)):
        with pytest.raises(HostSync), HostSyncDetector():
            sync()
    with pytest.raises(HostSync), HostSyncDetector():
        t.to("meta")  # a device other than the CPU (CUDA is not here): a blocking upload
    with HostSyncDetector() as detector:
        t.tolist()
        t.numpy()
        (t * 2).sum(dim=0, keepdim=True)
        t.to("meta", non_blocking=True)
    assert detector.transfers == 2 and torch.Tensor.tolist(t) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


ROWS = 256
BASE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
PHI3_LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 16,
                 "short_factor": [1.0 + i / 10 for i in range(8)], "long_factor": [2.0 + i / 4 for i in range(8)]}
MODELS = {
    "llama-3-rope": (tf.LlamaConfig, tf.LlamaForCausalLM, {"rope_parameters": LLAMA3_ROPE}),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}),
    "mistral-sliding-window": (tf.MistralConfig, tf.MistralForCausalLM, {"sliding_window": 6}),
    "phi-3-longrope": (tf.Phi3Config, tf.Phi3ForCausalLM, {"pad_token_id": 0, "rope_parameters": PHI3_LONGROPE}),
}


class AllowEven:
    """A trivial TokenMask: even token ids only."""

    def fill_bitmask(self, bitmask, row):
        bitmask[row] = 0x55555555  # bits 0, 2, 4, ...: tokens 32 * w + even

    def accept_token(self, token_id):
        assert token_id % 2 == 0


def params_for(i: int, mix: bool) -> tuple[SamplingParams, AllowEven | None]:
    """Temperature 1.0 for every row; with `mix`, rows also use every other sampling feature."""
    if not mix:
        return SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True, seed=i), None
    params = SamplingParams(temperature=0.0 if i % 7 == 0 else 1.0, max_tokens=20, ignore_eos=True, seed=i,
                            top_p=0.9 if i % 3 == 0 else 1.0, top_k=20 if i % 5 == 0 else -1,
                            presence_penalty=0.5 if i % 4 == 0 else 0.0, logit_bias={7: 5.0} if i % 6 == 0 else {},
                            logprobs=i % 2 == 0, top_logprobs=i % 4)
    return params, AllowEven() if i % 8 == 0 else None


@pytest.fixture(scope="module")
def engines():
    """One 256-row engine per model, built when a test first asks for it."""
    built = {}

    def get(name):
        if name not in built:
            config_class, model_class, extra = MODELS[name]
            torch.manual_seed(0)
            model = model_class(config_class(**BASE, **extra)).eval()
            built[name] = HFEngine(model, FakeTokenizer(),
                                   EngineConfig(max_running=ROWS, max_batched_tokens=1024, kv_cache_gb=1))
            built[name].sampler.host_reads = False  # as on a device (on the CPU top-p may read values: sampler.py)
            assert built[name].batched and built[name].max_running == ROWS
        return built[name]

    return get


# Every model at temperature 1.0; the sampler's other features (independent of the model) on one of them.
CASES = [(name, False) for name in MODELS] + [("llama-3-rope", True)]


@pytest.mark.parametrize(("model", "mix"), CASES, ids=[f"{m}-{'every-feature' if x else 'temperature-1'}"
                                                       for m, x in CASES])
def test_a_decode_step_of_256_rows_transfers_to_the_host_once(engines, model, mix):
    engine = engines(model)
    gen = torch.Generator().manual_seed(1)
    for i in range(ROWS):
        params, mask = params_for(i, mix)
        engine.add_request(f"{mix}-{i}", torch.randint(3, 300, (2 + i % 5,), generator=gen).tolist(), params,
                           constraint=mask)
    while engine.scheduler.waiting or any(not r.is_decoding for r in engine.scheduler.running.values()):
        engine.step()  # prefill (and the first tokens) outside the detector
    for _ in range(3):
        scheduled = engine.scheduler.schedule()
        assert len(scheduled.work) == ROWS and all(n == 1 for _, n in scheduled.work)
        with HostSyncDetector() as detector:
            sampled = engine._run(scheduled)
        assert detector.transfers == 1 and len(sampled) == ROWS
        outputs = engine.scheduler.postprocess(scheduled, sampled)
        assert len(outputs) == ROWS
    for request_id in engine.unfinished_request_ids():
        engine.abort(request_id)
