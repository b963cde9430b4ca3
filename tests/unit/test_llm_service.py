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
