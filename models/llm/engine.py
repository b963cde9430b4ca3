"""HFEngine: a continuous-batching LLMEngine on any transformers causal LM.

`step()` reads in three lines: the scheduler picks the work (decodes, prefill chunks, admissions; scheduler.py),
the runner runs it through the model in one forward (model_runner.py), and the sampled tokens are post-processed
per request through its `Sequence` (stop rules, detokenization). The batched runner drives the model with slot
attention over a static per-request KV cache (attention.py, kv_cache.py); a model that fails the load-time probe
of that path (an unusual attention, a hybrid architecture) runs on the per-request fallback (fallback_runner.py),
with a logged warning. On CPU, bf16/fp16 linear layers are pre-packed for oneDNN (cpu_linear.py), and weights that
are already 4-bit (a Q4 GGUF) decode small batches on int4 weights (cpu_int4.py).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from models.llm.cpu_int4 import Int4Weight, attach_int4, capture_lossless_int4, int4_supported
from models.llm.cpu_linear import pack_linears
from models.llm.fallback_runner import PerRequestRunner
from models.llm.kv_cache import KVShape, default_kv_budget_bytes, fit_num_slots, SlotAllocator
from models.llm.model_runner import (BatchedModelRunner, enable_slot_attention, probe_slot_attention,
                                     restore_attention)
from models.llm.request import EngineRequest
from models.llm.sampler import RequestSampler, SampledToken, sample_next
from models.llm.scheduler import Scheduler
from models.llm.sequence import Sequence
from models.llm.types import RequestOutput, SamplingParams, TokenLogprob
from models.llm.validation import validate_request

log = logging.getLogger(__name__)

# Prefill tokens per step besides the decodes. On CPU a step's cost grows with its tokens, so a smaller budget
# keeps decodes of running requests flowing while a long prompt is prefilled in chunks.
DEFAULT_MAX_BATCHED_TOKENS = {"cpu": 512, "cuda": 4096}
DEFAULT_MAX_MODEL_LEN = 8192  # when the options do not say (see _resolve_max_model_len)


class HFEngine:
    """LLMEngine over a transformers causal LM (see models.llm.types.LLMEngine for the contract).

    max_running: sequences decoded together (KV slots; fewer if `kv_cache_gb` cannot hold them).
    max_queued: requests waiting for a slot; `add_request` raises EngineOverloadedError beyond it.
    max_batched_tokens: tokens per step (decodes + prefill chunks). batched: False forces the per-request path.
    cuda_graphs: replay decode steps as CUDA graphs (CUDA only). kv_cache_gb: KV memory budget (default: see
    kv_cache.default_kv_budget_bytes). cpu_packed_linear: pack bf16/fp16 linear weights on CPU. int4_weights:
    lossless int4 forms of linear weights, by module name (cpu_int4.capture_lossless_int4, taken before any cast to
    half precision), used for decode steps of a few sequences on CPU.
    """

    def __init__(self, model: Any, tokenizer: Any, max_model_len: int | None = None, max_running: int = 16,
                 max_queued: int = 256, max_batched_tokens: int | None = None, batched: bool = True,
                 cuda_graphs: bool = True, kv_cache_gb: float | None = None, cpu_packed_linear: bool = True,
                 int4_weights: dict[str, Int4Weight] | None = None):
        if max_running < 1 or max_queued < 0:
            raise ValueError("max_running must be >= 1 and max_queued >= 0")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_model_len = _resolve_max_model_len(model.config, max_model_len)
        self.vocab_size = _vocab_size(model)
        self.device = next(model.parameters()).device
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        self.max_queued = max_queued
        self.packed_linears = pack_linears(model) if cpu_packed_linear else 0
        self.int4_linears = attach_int4(model, int4_weights) if int4_weights and self.device.type == "cpu" else 0
        self._threads = LoneDecodeThreads(enabled=self.int4_linears > 0)
        self.runner, self.max_running = self._make_runner(batched, max_running, cuda_graphs, kv_cache_gb)
        if self.device.type == "cpu":
            _warn_if_openmp_spins()
        budget = max_batched_tokens or DEFAULT_MAX_BATCHED_TOKENS.get(self.device.type, 512)
        self.scheduler = Scheduler(SlotAllocator(self.max_running), max_queued, max(budget, self.max_running))
        self._requests: dict[str, EngineRequest] = {}
        self.stats = StepStats()

    @classmethod
    def load(cls, location: str, gguf_file: str | None = None, dtype: str = "auto", device: str = "cpu",
             cache_dir: str | None = None, max_model_len: int | None = None, max_running: int = 16,
             cpu_int4_decode: bool = True, **engine_options: Any) -> "HFEngine":
        """Load the model and tokenizer with load_with_int4_weights and wrap them in an engine (options: see the
        class). cpu_int4_decode: for a GGUF on CPU, decode small batches on its exactly-4-bit weights (cpu_int4.py)."""
        model, tokenizer, int4_weights = load_with_int4_weights(location, gguf_file, dtype, device, cache_dir,
                                                                cpu_int4_decode)
        return cls(model, tokenizer, max_model_len=max_model_len, max_running=max_running, int4_weights=int4_weights,
                   **engine_options)

    @property
    def batched(self) -> bool:
        return isinstance(self.runner, BatchedModelRunner)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Queue a request; ModelInputError if it can never fit, EngineOverloadedError if the queue is full."""
        if request_id in self._requests:
            raise ValueError(f"duplicate request id {request_id!r}")
        prompt = [int(t) for t in prompt_token_ids]
        budget = validate_request(prompt, params, self.max_model_len, self.vocab_size)
        seq = Sequence(request_id, prompt, params, self.tokenizer, self.eos_token_ids, budget)
        request = EngineRequest(seq, RequestSampler(params, self.vocab_size, self.device))
        self.scheduler.add(request)
        self._requests[request_id] = request

    def step(self) -> list[RequestOutput]:
        """Run one scheduled step (decodes + prefill chunks); return one delta per request that sampled a token."""
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return []
        start = time.perf_counter()
        self._threads.set_for(sum(count for _, count in scheduled.work))
        with torch.inference_mode():
            sampled, logits = self.runner.execute(scheduled.work)
            for request, count in scheduled.work:
                request.num_computed += count
            tokens = sample_next(logits, [r.sampler for r in sampled]) if sampled else []
        outputs = [self._emit(r, t) for r, t in zip(sampled, tokens)]
        self.stats.record(start, scheduled, len(outputs), len(self.scheduler.running), len(self.scheduler.waiting))
        return outputs

    def abort(self, request_id: str) -> None:
        """Drop a request (waiting or running); its KV slot is free for the next step. Unknown ids are ignored."""
        request = self.scheduler.abort(request_id)
        if request is not None:
            self.runner.release(request)
            self._requests.pop(request_id, None)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def num_unfinished_requests(self) -> int:
        return len(self._requests)

    def unfinished_request_ids(self) -> list[str]:
        return [*self.scheduler.running, *(r.request_id for r in self.scheduler.waiting)]

    def _emit(self, request: EngineRequest, sampled: SampledToken) -> RequestOutput:
        request.append_output(sampled.token_id)
        output = request.seq.append(sampled.token_id, self._token_logprob(sampled))
        if output.finished:
            self.scheduler.finish(request)
            self.runner.release(request)
            self._requests.pop(request.request_id, None)
        return output

    def _token_logprob(self, sampled: SampledToken) -> TokenLogprob | None:
        if sampled.logprob is None:
            return None
        top = [(t, self._token_text(t), lp) for t, lp in sampled.top]
        return TokenLogprob(sampled.token_id, self._token_text(sampled.token_id), sampled.logprob, top)

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _make_runner(self, batched: bool, max_running: int, cuda_graphs: bool, kv_cache_gb: float | None):
        """(BatchedModelRunner, slots) when the probe passes, else (PerRequestRunner, max_running)."""
        name = type(self.model).__name__
        if batched:
            previous = enable_slot_attention(self.model)
            reason = probe_slot_attention(self.model, self.vocab_size)
            if reason is None:
                shape = KVShape.of(self.model.config)
                dtype = next(self.model.parameters()).dtype
                slots = fit_num_slots(shape, max_running, self.max_model_len, dtype,
                                      default_kv_budget_bytes(self.device, kv_cache_gb))
                runner = BatchedModelRunner(self.model, slots, self.max_model_len, cuda_graphs)
                log.info("%s: batched engine, %d slots x %d tokens (%.2f GiB KV reserved), %d packed linears, "
                         "%d with int4 decode weights", name, slots, self.max_model_len,
                         runner.cache.reserved_bytes / 2**30, self.packed_linears, self.int4_linears)
                return runner, slots
            restore_attention(self.model, previous)
            log.warning("%s: batched engine unavailable (%s); running one forward per request per step", name, reason)
        return PerRequestRunner(self.model), max_running


def load_with_int4_weights(location: str, gguf_file: str | None = None, dtype: str = "auto", device: str = "cpu",
                           cache_dir: str | None = None, int4: bool = True) -> tuple[Any, Any, dict[str, Int4Weight]]:
    """(model cast to `dtype`, tokenizer, int4 weights) with `load_causal_lm`. For a GGUF on CPU (its conversion is
    float32) and `int4`, the linear weights that are exactly 4-bit (cpu_int4.py) are found before the cast."""
    from models.llm.loader import load_causal_lm, resolve_dtype

    target = resolve_dtype(dtype, device)
    int4 = int4 and gguf_file is not None and str(device) == "cpu" and int4_supported()
    model, tokenizer = load_causal_lm(location, gguf_file=gguf_file, dtype="float32" if int4 else dtype,
                                      device=device, cache_dir=cache_dir)
    int4_weights = capture_lossless_int4(model) if int4 else {}
    if model.dtype != target:
        model.to(target)
    return model, tokenizer, int4_weights


class LoneDecodeThreads:
    """On CPU with int4 decode weights, a step of a single token (one sequence decoding alone) runs on one thread,
    every other step on all of torch's threads. One row of int4 weights is bound by memory latency, not arithmetic:
    SmolLM2 alone on this 2-core box, 1 thread 30.5 ms per token, 2 threads 31.2; through the server the freed core
    carries the streaming (ITL 38-46 -> 34-38 ms). From two sequences up the second thread pays (2: 32 vs 46 ms)."""

    def __init__(self, enabled: bool):
        self.full = torch.get_num_threads() if enabled else 0

    def set_for(self, tokens: int) -> None:
        if not self.full:
            return
        wanted = 1 if tokens == 1 else self.full
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)


class StepStats:
    """Logs, every `interval_s` of activity, the step rate, token throughput and step time (INFO)."""

    def __init__(self, interval_s: float = 10.0):
        self.interval_s = interval_s
        self._reset(time.perf_counter())

    def record(self, start: float, scheduled, sampled: int, running: int, waiting: int) -> None:
        now = time.perf_counter()
        if start - self.last > self.interval_s:  # idle since the last step: start a new window
            self._reset(start)
        self.last = now
        self.steps += 1
        self.busy_s += now - start
        self.tokens_in += sum(n for _, n in scheduled.work)
        self.tokens_out += sampled
        if now - self.since >= self.interval_s:
            elapsed = now - self.since
            log.info("engine: %.1f steps/s, %.1f ms/step, %.0f tokens/s in, %.0f tokens/s out, %d running, "
                     "%d waiting", self.steps / elapsed, 1000 * self.busy_s / self.steps, self.tokens_in / elapsed,
                     self.tokens_out / elapsed, running, waiting)
            self._reset(now)

    def _reset(self, now: float) -> None:
        self.since, self.last, self.steps, self.busy_s, self.tokens_in, self.tokens_out = now, now, 0, 0.0, 0, 0


def _warn_if_openmp_spins() -> None:
    """Several OpenMP threads that spin while waiting collapse when other processes want the same cores: measured
    here with another process busy, a 2-thread fp32 decode step of 16 sequences took 521 ms spinning, 124 ms with
    OMP_WAIT_POLICY=PASSIVE and 191 ms on one thread. The policy is read when the process starts, so say so. A
    process that sets GOMP_SPINCOUNT chose its spinning (serving's engine process does, at nice 0)."""
    if (torch.get_num_threads() > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"
            and "GOMP_SPINCOUNT" not in os.environ):
        log.warning("torch uses %d OpenMP threads with their default (spinning) wait policy: if other processes "
                    "share these cores, steps can slow down several times; start the process with "
                    "OMP_WAIT_POLICY=PASSIVE", torch.get_num_threads())


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids: the tokenizer's eos plus the generation config's (an int or a list)."""
    ids: set[int] = set()
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        candidates.append(generation_config.eos_token_id)
    for c in candidates:
        if isinstance(c, int):
            ids.add(c)
        elif c is not None:
            ids.update(int(x) for x in c)
    return ids


def _vocab_size(model: Any) -> int:
    """Rows of the LM head (may exceed len(tokenizer) when padded); the config's vocab_size otherwise."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)


def _resolve_max_model_len(config: Any, requested: int | None) -> int:
    """`requested` capped by the model's max_position_embeddings; without a request, the model's own length up to
    DEFAULT_MAX_MODEL_LEN (every KV slot reserves max_model_len tokens: 128k-token slots would rarely fit)."""
    native = getattr(config, "max_position_embeddings", None)
    if native is None and requested is None:
        raise ValueError("max_model_len is required: the model config has no max_position_embeddings")
    if native is None:
        return int(requested)
    if requested is None:
        if native > DEFAULT_MAX_MODEL_LEN:
            log.info("max_model_len defaults to %d (the model allows %d; set max_model_len to raise it)",
                     DEFAULT_MAX_MODEL_LEN, native)
        return min(int(native), DEFAULT_MAX_MODEL_LEN)
    return min(int(native), int(requested))
