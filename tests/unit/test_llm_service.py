"""LLMService: the engine thread, streaming to asyncio callers, n choices, aborts and admission limits."""
import asyncio
import itertools

import pytest

from models.llm.fake import FakeEngine
from models.llm.types import SamplingParams
from serving.clients import GenerationRequest
from serving.errors import InvalidRequestError, ServerOverloadedError
from serving.services.llm import LLMService


@pytest.fixture
def service():
    svc = LLMService(FakeEngine(step_delay=0.001), max_pending=4)
    yield svc
    svc.shutdown()


_ids = itertools.count()


def chat(text: str, n: int = 1, **params) -> GenerationRequest:
    return GenerationRequest(f"r{next(_ids)}", SamplingParams(**params), messages=[{"role": "user", "content": text}], n=n)


async def collect(service, request):
    texts, finish = {}, {}
    async for chunk in service.generate(request):
        texts[chunk.index] = texts.get(chunk.index, "") + chunk.text
        if chunk.finish_reason:
            finish[chunk.index] = chunk.finish_reason
    return texts, finish


async def test_streams_the_fake_answer(service):
    texts, finish = await collect(service, chat("hello there", max_tokens=50, temperature=0))
    assert texts == {0: "hello there"} and finish == {0: "stop"}


async def test_n_choices_use_consecutive_seeds(service):
    texts, _ = await collect(service, chat("hi", n=2, max_tokens=50, temperature=1.0, seed=5))
    again, _ = await collect(service, chat("hi", n=1, max_tokens=50, temperature=1.0, seed=6))
    assert texts[0] != texts[1] and texts[1] == again[0]


async def test_concurrent_requests_each_get_their_own_answer(service):
    results = await asyncio.gather(*[collect(service, chat(f"q{i}", max_tokens=20, temperature=0)) for i in range(4)])
    assert [r[0][0] for r in results] == [f"q{i}" for i in range(4)]


async def test_input_errors_become_400_before_any_chunk(service):
    with pytest.raises(InvalidRequestError) as e:
        await collect(service, chat("hi", max_tokens=10**6))
    assert e.value.param == "max_tokens"
    texts, _ = await collect(service, chat("still serving", max_tokens=30, temperature=0))
    assert texts[0] == "still serving"


async def test_leaving_early_aborts_and_frees_capacity(service):
    gen = service.generate(chat("a long answer", max_tokens=1000, ignore_eos=True, temperature=0))
    async for _ in gen:
        break
    await gen.aclose()
    for _ in range(100):
        if not service.engine.has_unfinished_requests():
            break
        await asyncio.sleep(0.01)
    assert not service.engine.has_unfinished_requests()
    assert any(rid.startswith("r") for rid in service.engine.aborted)
    assert service._pending == 0


async def test_admission_limit_answers_overloaded(service):
    gens = [service.generate(chat("x", max_tokens=1000, ignore_eos=True)) for _ in range(2)]
    firsts = [await g.__anext__() for g in gens]
    assert len(firsts) == 2
    with pytest.raises(ServerOverloadedError):
        await collect(service, chat("y", n=3))
    for g in gens:
        await g.aclose()


async def test_default_admission_bound_is_the_engines_running_plus_queued():
    svc = LLMService(FakeEngine(step_delay=0.001, max_running=2, max_queued=1, max_model_len=10**6))
    try:
        assert svc.max_pending == 3
        gens = [svc.generate(chat("x", max_tokens=10**5, ignore_eos=True)) for _ in range(3)]
        for g in gens[:2]:
            await g.__anext__()
        queued = asyncio.create_task(gens[2].__anext__())  # waits for a slot that never frees
        await asyncio.sleep(0.05)
        with pytest.raises(ServerOverloadedError):
            await collect(svc, chat("y"))
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        for g in gens:
            await g.aclose()
    finally:
        svc.shutdown()


async def test_batches_carry_every_delta_ready_when_the_consumer_lags(service):
    gen = service.generate_batches(chat("abcdefghij", max_tokens=50, temperature=0))
    first = await gen.__anext__()
    await asyncio.sleep(0.2)  # the engine runs ahead (1 ms per step): the rest is waiting in the queue
    rest = [chunk async for batch in gen for chunk in batch]
    text = "".join(c.text for c in first + rest)
    assert text == "abcdefghij" and len(rest) > 1


async def test_closing_a_stream_frees_the_engines_slot_for_the_next_request(tmp_path):
    from models.llm.engine import HFEngine
    from models.llm.loader import load_causal_lm
    from tests.fixtures.tiny_llm import build_tiny_llm

    engine = HFEngine(*load_causal_lm(build_tiny_llm(str(tmp_path / "m")), dtype="float32"), max_running=1, max_queued=0)
    svc = LLMService(engine)
    try:
        gen = svc.generate(chat("hello", max_tokens=200, ignore_eos=True, temperature=0))
        await gen.__anext__()
        with pytest.raises(ServerOverloadedError):  # the only slot is taken, no queue
            await collect(svc, chat("more"))
        await gen.aclose()
        for _ in range(200):
            if not engine.has_unfinished_requests() and svc._pending == 0:
                break
            await asyncio.sleep(0.005)
        assert engine.scheduler.slots.num_free == 1 and svc._pending == 0
        texts, finish = await collect(svc, chat("again", max_tokens=3, ignore_eos=True, temperature=0))
        assert finish == {0: "length"} and texts[0]
    finally:
        svc.shutdown()


async def test_an_engine_in_a_child_process_streams_aborts_and_refuses_like_one_in_process():
    from serving.services.engine_process import EngineProcess

    engine = EngineProcess(FakeEngine, (None, 2048, 1, 1, 0.002))  # tokenizer, max_model_len, running, queued, delay
    svc = LLMService(engine)
    try:
        assert svc.max_pending == 2 and engine.tokenizer.eos_token_id == 2 and svc.is_alive()
        texts, finish = await collect(svc, chat("from the child", max_tokens=50, temperature=0))
        assert texts == {0: "from the child"} and finish == {0: "stop"}
        with pytest.raises(InvalidRequestError):  # validated in the parent, synchronously
            await collect(svc, chat("hi", max_tokens=10**6))
        gen = svc.generate(chat("long", max_tokens=1000, ignore_eos=True))
        await gen.__anext__()
        await gen.aclose()  # aborted in the child
        for _ in range(200):
            if not engine.has_unfinished_requests() and svc._pending == 0:
                break
            await asyncio.sleep(0.005)
        texts, _ = await collect(svc, chat("again", max_tokens=50, temperature=0))
        assert texts == {0: "again"}
    finally:
        svc.shutdown()
    assert not engine.is_alive()


def test_an_engine_process_that_fails_to_build_raises_its_error_in_the_parent():
    from serving.services.engine_process import EngineProcess

    with pytest.raises(RuntimeError, match="failed to start(.|\n)*invalid literal"):
        EngineProcess(int, ("not a number",))  # the child's build raises ValueError


async def test_a_dead_engine_process_fails_its_streams_and_the_service_reports_unhealthy():
    from serving.services.engine_process import EngineProcess

    engine = EngineProcess(FakeEngine, (None, 2048, 1, 1, 0.01))  # tokenizer, max_model_len, running, queued, delay
    svc = LLMService(engine)
    try:
        gen = svc.generate(chat("long", max_tokens=1000, ignore_eos=True))
        await gen.__anext__()
        engine._process.kill()
        with pytest.raises(RuntimeError, match="generation failed"):
            async for _ in gen:
                pass
        assert not svc.is_alive()  # the replica's health check fails, and Serve replaces the replica
    finally:
        svc.shutdown()
