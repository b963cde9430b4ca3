"""Scheduler and slot allocator alone (no model): decodes first, chunked prefill under a token budget, FIFO
admission by free slots, aborts that free slots at once, and refusal past max_queued."""
import pytest
import torch

from models.errors import EngineOverloadedError
from models.llm.fake import FakeTokenizer
from models.llm.kv_cache import KVShape, SlotAllocator, fit_num_slots
from models.llm.request import EngineRequest
from models.llm.sampler import SampledToken
from models.llm.scheduler import Scheduler
from models.llm.sequence import Sequence
from models.llm.types import SamplingParams


def request(rid: str, prompt_len: int) -> EngineRequest:
    params = SamplingParams(max_tokens=8)
    seq = Sequence(rid, [5] * prompt_len, params, FakeTokenizer(), [2], 8)
    return EngineRequest(seq)


def run(step, s):
    """Pretend the model ran the step: a finished prefill or decode samples token 7; the scheduler postprocesses."""
    work = [(r.request_id, n) for r, n in step.work]
    s.postprocess(step, [(r, SampledToken(7)) for r, n in step.work if n == r.num_pending])
    return work


def test_decodes_go_first_then_prefill_chunks_oldest_first_then_admissions():
    s = Scheduler(SlotAllocator(3), max_queued=4, max_batched_tokens=8)
    for rid, n in (("a", 3), ("b", 10), ("c", 4), ("d", 2)):
        s.add(request(rid, n))
    assert run(s.schedule(), s) == [("a", 3), ("b", 5)]  # budget 8: "b" gets a first chunk; "c" waits for budget
    assert run(s.schedule(), s) == [("a", 1), ("b", 5), ("c", 2)]  # "a" decodes; "b" finishes; "c" admitted (slot 3)
    assert run(s.schedule(), s) == [("a", 1), ("b", 1), ("c", 2)]  # no slot left for "d"
    assert [r.request_id for r in s.waiting] == ["d"] and s.slots.num_free == 0


def test_finish_and_abort_free_slots_for_the_next_schedule():
    s = Scheduler(SlotAllocator(1), max_queued=2, max_batched_tokens=4)
    a, b, c = request("a", 2), request("b", 2), request("c", 2)
    for r in (a, b, c):
        s.add(r)
    assert run(s.schedule(), s) == [("a", 2)] and a.slot == 0
    assert s.abort("c") is c and [r.request_id for r in s.waiting] == ["b"]  # a waiting one: just dropped
    assert s.abort("a") is a and a.slot is None and s.slots.num_free == 1
    assert run(s.schedule(), s) == [("b", 2)] and b.slot == 0
    s.finish(b)
    assert not s.has_unfinished() and s.abort("unknown") is None and s.schedule().work == []


def test_refuses_past_slots_plus_max_queued():
    s = Scheduler(SlotAllocator(2), max_queued=1, max_batched_tokens=8)
    for rid in "abc":
        s.add(request(rid, 2))
    with pytest.raises(EngineOverloadedError):
        s.add(request("d", 2))
    with pytest.raises(ValueError):
        Scheduler(SlotAllocator(4), max_queued=0, max_batched_tokens=3)  # not even one decode each


def test_slots_are_lowest_first_and_kv_budget_limits_them():
    slots = SlotAllocator(4)
    assert [slots.allocate() for _ in range(3)] == [0, 1, 2]
    slots.free(1)
    assert slots.allocate() == 1 and slots.highest_used() == 2
    with pytest.raises(ValueError):
        slots.free(3)
    shape = KVShape(num_layers=2, num_kv_heads=2, head_dim=8)  # 2 * 2 * 2 * 8 * 4 bytes = 256 B per fp32 token
    assert fit_num_slots(shape, 16, 100, torch.float32, budget_bytes=256 * 100 * 5) == 5
    with pytest.raises(ValueError):
        fit_num_slots(shape, 16, 100, torch.float32, budget_bytes=1000)
