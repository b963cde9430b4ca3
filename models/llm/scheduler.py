"""Which requests run at the next step, and how many of their tokens: continuous batching with chunked prefill.

Policy, per step, under a budget of `max_batched_tokens` tokens:
1. every decoding request gets its one token (decodes never wait behind a long prompt, so the time per output
   token stays even);
2. requests part-way through their prompt get the next chunk of it, oldest first;
3. waiting requests are admitted, first come first served, while a KV slot is free and budget is left; each
   starts its prefill in this same step.
A request holds its slot (all the KV memory its budget can need) from admission to finish or abort, so running
requests never run out of memory and there is nothing to preempt (admission reserves, it never deadlocks).
With a prefix cache, an admitted request starts from the longest cached run of its prompt's blocks, and the full
blocks it computed as a fresh prefill would are offered to the cache when its prompt is computed and when it leaves
(prefix_cache.py).
When all slots are taken and `max_queued` requests already wait, `add` refuses with EngineOverloadedError (the server answers 429).

After the model ran, `postprocess` does the step's bookkeeping (as nano-vllm's Scheduler.postprocess): every fed
token is now in the cache, each sampled token is appended to its request, and finished requests free their slot.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from models.errors import EngineOverloadedError
from models.llm.kv_cache import SlotAllocator
from models.llm.prefix_cache import PrefixCache
from models.llm.request import EngineRequest
from models.llm.sampler import SampledToken
from models.llm.stats import StepCounters
from models.llm.types import RequestOutput


@dataclass
class ScheduledStep:
    """The work of one step: (request, number of its pending tokens to feed), decodes first."""

    work: list[tuple[EngineRequest, int]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def __bool__(self) -> bool:
        return bool(self.work)

    @property
    def num_tokens(self) -> int:
        return sum(count for _, count in self.work)


class Scheduler:
    def __init__(self, slots: SlotAllocator, max_queued: int, max_batched_tokens: int,
                 prefix: PrefixCache | None = None):
        if max_batched_tokens < slots.num_slots:
            raise ValueError("max_batched_tokens must be >= the number of slots (one decode token each)")
        self.slots = slots
        self.max_queued = max_queued
        self.max_batched_tokens = max_batched_tokens
        self.prefix = prefix
        self.waiting: deque[EngineRequest] = deque()
        self.running: dict[str, EngineRequest] = {}  # in admission order: older prefills get their chunks first
        self.counters = StepCounters()
        self._unfinished: set[str] = set()  # ids of waiting and running requests

    def add(self, request: EngineRequest) -> None:
        """Queue a request; ValueError for an id already unfinished, EngineOverloadedError when every slot is taken
        and `max_queued` already wait."""
        if request.request_id in self._unfinished:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        if len(self.waiting) + len(self.running) >= self.slots.num_slots + self.max_queued:
            raise EngineOverloadedError(
                f"the model is at capacity ({len(self.running)} running, {len(self.waiting)} waiting, "
                f"at most {self.slots.num_slots} + {self.max_queued}); retry later"
            )
        self.waiting.append(request)
        self._unfinished.add(request.request_id)

    def schedule(self) -> ScheduledStep:
        """The next step's work, by the policy above; admitted requests get their slot here."""
        step = ScheduledStep()
        budget = self.max_batched_tokens
        prefilling = []
        for request in self.running.values():
            if request.is_decoding:
                step.work.append((request, 1))
                budget -= 1
            else:
                prefilling.append(request)
        for request in prefilling:
            budget -= self._take_chunk(step, request, budget)
        while self.waiting and budget > 0 and self.slots.num_free:
            request = self.waiting.popleft()
            request.slot = self.slots.allocate()
            if self.prefix is not None:
                self.prefix.attach(request)
            self.running[request.request_id] = request
            budget -= self._take_chunk(step, request, budget)
        return step

    def postprocess(self, step: ScheduledStep, sampled: list[tuple[EngineRequest, SampledToken]]
                    ) -> list[RequestOutput]:
        """The model ran `step` and sampled `sampled`: advance each request past the tokens it was fed, append
        each sampled token, free the slots of requests that finished; return one delta per sampled token."""
        if not step:
            return []
        prompt_tokens = 0
        for request, count in step.work:
            if self.prefix is not None:
                self.prefix.advance(request, count, step.num_tokens)
            if not request.is_decoding:
                prompt_tokens += count
                request.num_computed += count
                if self.prefix is not None and request.is_decoding:  # its prompt is all in the cache now
                    self.prefix.publish(request)
            else:
                request.num_computed += count
        outputs = []
        for request, token in sampled:
            output = request.append(token)
            if output.finished:
                self.finish(request)
            outputs.append(output)
        finished = sum(o.finished for o in outputs)
        self.counters.record(step.started, prompt_tokens, len(outputs), finished, len(self.running),
                             len(self.waiting))
        return outputs

    def finish(self, request: EngineRequest) -> None:
        """Release a running request's slot (it finished or was aborted), offering its full blocks to the cache."""
        if self.running.pop(request.request_id, None) is not None:
            if self.prefix is not None:
                self.prefix.publish(request)
            self.slots.free(request.slot)
            request.slot = None
        self._unfinished.discard(request.request_id)

    def abort(self, request_id: str) -> EngineRequest | None:
        """Drop a waiting or running request, freeing its slot at once; the request, or None if unknown."""
        if request_id not in self._unfinished:
            return None
        self.counters.aborted_requests += 1
        request = self.running.get(request_id)
        if request is not None:
            self.finish(request)
            return request
        request = next(r for r in self.waiting if r.request_id == request_id)
        self.waiting.remove(request)
        self._unfinished.discard(request_id)
        return request

    def has_unfinished(self) -> bool:
        return bool(self._unfinished)

    @property
    def num_unfinished(self) -> int:
        return len(self._unfinished)

    @staticmethod
    def _take_chunk(step: ScheduledStep, request: EngineRequest, budget: int) -> int:
        count = min(request.num_pending, budget)
        if count > 0:
            step.work.append((request, count))
        return count
