"""HFEngine: a continuous-batching LLMEngine on any transformers causal LM.

`step()` is schedule -> run the model -> postprocess: the scheduler picks the work (decodes, prefill chunks,
admissions; scheduler.py), the runner feeds it through the model in one forward (model_runner.py) and the batched
sampler draws every row's token at once (sampler.py), then the scheduler appends the tokens, applies the stop
rules through each request's `Sequence` and frees the slots of finished requests. The batched runner drives the
model with slot attention over a static per-request KV cache (attention.py, kv_cache.py); a model that fails the
load-time probe of that path (an unusual attention, a hybrid architecture) runs on the per-request fallback
(fallback_runner.py), with a logged warning. Loading is loader.py's, CPU thread tuning cpu_tuning.py's.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

from models.llm.config import EngineConfig
from models.errors import FastPathError
from models.llm.constraints import TokenMask
from models.llm.cpu_int4 import SMALL_ROWS, Int4Weight, attach_int4
from models.llm.cpu_linear import pack_linears
from models.llm.cpu_native import HELPER_MIN_BYTES, NativeWeight, attach_native, load_kernels, share_embedding
from models.llm.cpu_tuning import LoneDecodeThreads, warn_if_openmp_spins
from models.llm.fallback_runner import PerRequestRunner
from models.llm.gpu_memory import activation_reserve_of
from models.llm.kv_cache import (KVShape, SlotAllocator, default_kv_budget_bytes, fit_num_slots,
                                  prefix_cache_blocks)
from models.llm.compiled_decode import build_compiled_decoder
from models.llm.lean_decode import checked_fast_decoder
from models.llm.native_step import checked_native_step
from models.llm.loader import eos_token_ids, load_with_int4_weights, resolve_max_model_len, vocab_size_of
from models.llm.model_runner import (BatchedModelRunner, enable_slot_attention, probe_slot_attention,
                                     restore_attention)
from models.llm.request import EngineRequest
from models.llm.sampler import BatchSampler, SampledToken
from models.llm.scheduler import ScheduledStep, Scheduler
from models.llm.sequence import Sequence
from models.llm.types import EngineStats, RequestOutput, SamplingParams
from models.llm.validation import validate_request

log = logging.getLogger(__name__)

# Prefill tokens per step besides the decodes. On CPU a step's cost grows with its tokens, so a smaller budget
# keeps decodes of running requests flowing while a long prompt is prefilled in chunks.
DEFAULT_MAX_BATCHED_TOKENS = {"cpu": 512, "cuda": 4096}


def _cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class HFEngine:
    """LLMEngine over a transformers causal LM (the contract: models.llm.types.LLMEngine; options: EngineConfig).

    int4_weights: exact 4-bit (or, for the native kernels, 4- and 8-bit) forms of linear weights by module name
    (loader.load_with_int4_weights), used for decode steps of a few sequences on CPU.
    """

    def __init__(self, model: Any, tokenizer: Any, config: EngineConfig | None = None,
                 int4_weights: dict[str, Int4Weight | NativeWeight] | None = None, cache_dir: str | None = None):
        config = config or EngineConfig()
        self.config = config
        self.cache_dir = cache_dir  # where compiled decode keeps inductor's artefacts (None: inductor's default)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_model_len = resolve_max_model_len(model.config, config.max_model_len)
        self.vocab_size = vocab_size_of(model)
        self.device = next(model.parameters()).device
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        self.max_queued = config.max_queued
        self.packed_linears = pack_linears(model) if config.cpu_packed_linear else 0
        self.int4_linears = self._attach_decode_weights(int4_weights or {})
        self._threads = LoneDecodeThreads(enabled=self.int4_linears > 0)
        budget = config.max_batched_tokens or DEFAULT_MAX_BATCHED_TOKENS.get(self.device.type, 512)
        self.runner, self.max_running = self._make_runner(max(budget, config.running_on(self.device.type)))
        if self.device.type == "cpu":
            warn_if_openmp_spins()
        prefix = self.runner.prefix if self.batched else None
        self.scheduler = Scheduler(SlotAllocator(self.max_running), self.max_queued, max(budget, self.max_running),
                                   prefix)
        self.sampler = BatchSampler(self.max_running, self.vocab_size, self.device)
        self._closed = False

    @classmethod
    def load(cls, location: str, gguf_file: str | None = None, dtype: str = "auto", device: str = "cpu",
             cache_dir: str | None = None, config: EngineConfig | None = None) -> "HFEngine":
        """Load the model and tokenizer (loader.load_with_int4_weights) and wrap them in an engine."""
        config = config or EngineConfig()
        model, tokenizer, int4_weights = load_with_int4_weights(location, gguf_file, dtype, device, cache_dir,
                                                                config.cpu_int4_decode, config.cpu_native_decode)
        return cls(model, tokenizer, config, int4_weights, cache_dir)

    def _attach_decode_weights(self, weights: dict[str, Int4Weight | NativeWeight]) -> int:
        """Wrap the layers with 4/8-bit decode weights (cpu_native.py's kernels or PyTorch's int4, cpu_int4.py);
        return how many."""
        self.native_kernels = None
        if not weights or self.device.type != "cpu":
            return 0
        native = {name: w for name, w in weights.items() if isinstance(w, NativeWeight)}
        int4 = {name: w for name, w in weights.items() if isinstance(w, Int4Weight)}
        kernels = load_kernels(self.cache_dir) if native else None
        attached = attach_native(self.model, native, kernels)
        self.native_kernels = kernels if attached else None
        if attached and self.config.cpu_native_helper and _cores() > 1:
            kernels.use_helper_thread(HELPER_MIN_BYTES)
        if attached and share_embedding(self.model):
            log.info("the input embedding reads the 8-bit LM head's weights (its bf16 copy freed)")
        return attached + attach_int4(self.model, int4)

    @property
    def batched(self) -> bool:
        return isinstance(self.runner, BatchedModelRunner)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    constraint: TokenMask | None = None) -> None:
        """Queue a request; ModelInputError if it can never run, EngineOverloadedError if the queue is full,
        ValueError for an unfinished id. `constraint`: the tokens it may sample at each step (constraints.py)."""
        self._check_open()
        prompt = [int(t) for t in prompt_token_ids]
        budget = validate_request(prompt, params, self.max_model_len, self.vocab_size)
        seq = Sequence(request_id, prompt, params, self.tokenizer, self.eos_token_ids, budget)
        self.scheduler.add(EngineRequest(seq, constraint))

    def step(self) -> list[RequestOutput]:
        """Run one scheduled step (decodes + prefill chunks); return one delta per request that sampled a token."""
        scheduled = self.scheduler.schedule()
        sampled = self._run(scheduled)
        return self.scheduler.postprocess(scheduled, sampled)

    def abort(self, request_id: str) -> None:
        """Drop a request (waiting or running); its KV slot is free for the next step. Unknown ids are ignored."""
        self.scheduler.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def num_unfinished_requests(self) -> int:
        return self.scheduler.num_unfinished

    def unfinished_request_ids(self) -> list[str]:
        return [*self.scheduler.running, *(r.request_id for r in self.scheduler.waiting)]

    def stats(self) -> EngineStats:
        """The engine's state and counters now (models.llm.types.EngineStats)."""
        s, c = self.scheduler, self.scheduler.counters
        graphs = getattr(self.runner, "graphs", None)
        prefix = s.prefix.counters if s.prefix is not None else None
        return EngineStats(
            running=len(s.running), waiting=len(s.waiting),
            kv_slots_used=s.slots.num_slots - s.slots.num_free, kv_slots_total=s.slots.num_slots,
            kv_tokens_used=sum(r.num_computed for r in s.running.values()),
            steps=c.steps, busy_s=c.busy_s, prompt_tokens=c.prompt_tokens, generated_tokens=c.generated_tokens,
            finished_requests=c.finished_requests, aborted_requests=c.aborted_requests,
            batched=self.batched, cuda_graphs=graphs.num_captured if graphs is not None else 0,
            device=self.device.type, cuda_graphs_on=graphs is not None and graphs.enabled,
            prefix_cache_hit_tokens=prefix.hit_tokens if prefix else 0,
            prefix_cache_miss_tokens=prefix.miss_tokens if prefix else 0,
        )

    def is_alive(self) -> bool:
        return not self._closed

    def close(self) -> None:
        """Abort every unfinished request and drop the KV cache; the engine refuses requests afterwards."""
        for request_id in self.unfinished_request_ids():
            self.abort(request_id)
        self.sampler.release_all()
        self.runner = None
        self._closed = True

    def _run(self, scheduled: ScheduledStep) -> list[tuple[EngineRequest, SampledToken]]:
        """Feed the step's tokens through the model and sample the requests whose fed tokens reach their end."""
        if not scheduled:
            return []
        self._threads.set_for(scheduled.num_tokens)
        with torch.inference_mode():
            requests, logits = self.runner.execute(scheduled.work)
            tokens = self.sampler.sample(logits, requests) if requests else []
        return list(zip(requests, tokens))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the engine is closed")

    def _make_runner(self, step_tokens: int):
        """(BatchedModelRunner, slots) when the probe passes, else (PerRequestRunner, max_running); with
        `strict`, FastPathError instead of the per-request fallback."""
        config, name = self.config, type(self.model).__name__
        max_running = config.running_on(self.device.type)
        if config.batched:
            previous = enable_slot_attention(self.model)
            reason = probe_slot_attention(self.model, self.vocab_size)
            if reason is None:
                shape = KVShape.of(self.model.config)
                dtype = next(self.model.parameters()).dtype
                reserve = activation_reserve_of(self.model.config, step_tokens, max_running, dtype)
                kv_budget = default_kv_budget_bytes(self.device, config.kv_cache_gb, config.gpu_memory_share, reserve)
                blocks = prefix_cache_blocks(shape, dtype, config) if config.prefix_caching else 0
                if self.device.type == "cuda":  # the prefix pool is committed at once there: it comes out of the share
                    kv_budget -= blocks * config.kv_block_size * shape.bytes_per_token(dtype)
                slots = fit_num_slots(shape, max_running, self.max_model_len, dtype, kv_budget)
                runner = BatchedModelRunner(self.model, slots, self.max_model_len, config.cuda_graphs, blocks,
                                            config.kv_block_size, strict=config.strict,
                                            fast_decoder=self._fast_decoder(),
                                            inexact_rows=SMALL_ROWS if self.int4_linears else 0)
                log.info("%s: batched engine, %d slots x %d tokens (%.2f GiB KV reserved), prefix cache of %d "
                         "blocks x %d tokens, %d packed linears, %d with 4/8-bit decode weights, lean decode %s", name,
                         slots, self.max_model_len, runner.cache.reserved_bytes / 2**30, blocks, config.kv_block_size,
                         self.packed_linears, self.int4_linears, "on" if runner.fast_decoder is not None else "off")
                return runner, slots
            restore_attention(self.model, previous)
            if config.strict:
                raise FastPathError(f"{name}: the batched engine is unavailable ({reason}) and options.strict "
                                    "forbids the per-request fallback")
            log.warning("%s: batched engine unavailable (%s); running one forward per request per step", name, reason)
        return PerRequestRunner(self.model), max_running

    def _fast_decoder(self):
        """The lean decode path (lean_decode.py) where decode steps are not CUDA graph replays, else None; with int4
        decode weights on CPU, its compiled form (compiled_decode.py), compiling in the background."""
        config = self.config
        if not config.lean_decode or (config.cuda_graphs and self.device.type == "cuda"):
            return None
        decoder = checked_fast_decoder(self.model, self.vocab_size)
        if decoder is not None and config.cpu_native_step and self.native_kernels is not None:
            native = checked_native_step(decoder, self.native_kernels, self.vocab_size)
            if native is not None:
                return native
        if decoder is None or not (config.compiled_decode and self.int4_linears and self.device.type == "cpu"):
            return decoder
        compiled = build_compiled_decoder(decoder)
        if compiled is None:
            log.info("%s: no compiled decode for these layers; lean decode stays eager", type(self.model).__name__)
            return decoder
        compiled.start(self.cache_dir)
        return compiled
