"""LLMService over an in-process engine: streaming to asyncio callers, n choices, aborts, admission limits, prompts
made off the engine thread, and what the service does when its engine fails. Waits are predicates with deadlines."""
import asyncio
import itertools
import threading

import pytest

from models.llm.fake import FakeEngine, FakeTokenizer
from models.llm.types import SamplingParams
from serving.clients import GenerationRequest
from serving.errors import InvalidRequestError, ModelUnavailableError, ServerOverloadedError, ServingError
from serving.services.engine_core import LocalEngine
from serving.services.llm import LLMService, RestartPolicy
from tests.fixtures.faulty_llm import FaultyEngine
from tests.waiting import wait_until

_ids = itertools.count()


def chat(text: str, n: int = 1, **params) -> GenerationRequest:
    return GenerationRequest(f"r{next(_ids)}", SamplingParams(**params), messages=[{"role": "user", "content": text}], n=n)


def serve(engine, **kwargs) -> LLMService:
    return LLMService(lambda: LocalEngine(engine), **kwargs)


@pytest.fixture
def engine():
    return FakeEngine(step_delay=0.001)


@pytest.fixture
def service(engine):
    svc = serve(engine, max_pending=4)
    yield svc
    svc.shutdown()


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


async def test_input_errors_are_400s_on_the_callers_side_and_never_reach_the_engine(service, engine):
    with pytest.raises(InvalidRequestError) as e:
        await collect(service, chat("hi", max_tokens=10**6))
    assert e.value.param == "max_tokens" and service._pending == 0
    assert engine.num_unfinished_requests() == 0 and engine.aborted == []
    texts, _ = await collect(service, chat("still serving", max_tokens=30, temperature=0))
    assert texts[0] == "still serving"


async def test_a_prompt_over_the_character_cap_is_refused_before_tokenizing(service):
    cap = service._prompts.max_chars
    assert cap == 128 * service.max_model_len
    with pytest.raises(InvalidRequestError, match="characters") as e:
        await collect(service, chat("x" * (cap + 1)))
    assert e.value.param == "messages" and service._pending == 0


class GatedTokenizer(FakeTokenizer):
    """Templating blocks on GATE for a message saying "wait", and records the thread it ran on."""

    gate = threading.Event()
    threads: list[str] = []

    def apply_chat_template(self, messages, **kwargs):
        GatedTokenizer.threads.append(threading.current_thread().name)
        if messages[-1]["content"] == "wait":
            assert GatedTokenizer.gate.wait(30)
        return super().apply_chat_template(messages, **kwargs)


async def test_prompts_are_made_off_the_engine_thread_so_a_slow_one_stalls_no_stream():
    GatedTokenizer.gate.clear()
    GatedTokenizer.threads.clear()
    svc = serve(FakeEngine(tokenizer=GatedTokenizer(), step_delay=0.001))
    slow = None
    try:
        running = svc.generate(chat("a long answer", max_tokens=200, ignore_eos=True, temperature=0))
        first = await running.__anext__()
        slow = asyncio.create_task(collect(svc, chat("wait", max_tokens=20, temperature=0)))
        await wait_until(lambda: len(GatedTokenizer.threads) == 2, what="the slow prompt to be templated")
        rest = await asyncio.wait_for(_drain(running), 30)  # with templating on the engine thread: stuck here
        assert first.completion_tokens + len(rest) == 200 and rest[-1].finish_reason == "length"
        assert not slow.done()
    finally:
        GatedTokenizer.gate.set()
        if slow is not None:
            assert (await slow) == ({0: "wait"}, {0: "stop"})
        svc.shutdown()
    assert GatedTokenizer.threads and all(t.startswith("llm-prompts") for t in GatedTokenizer.threads)


async def _drain(stream) -> list:
    return [chunk async for chunk in stream]


async def test_leaving_early_aborts_and_frees_capacity(service, engine):
    gen = service.generate(chat("a long answer", max_tokens=1000, ignore_eos=True, temperature=0))
    async for _ in gen:
        break
    await gen.aclose()
    await wait_until(lambda: not engine.has_unfinished_requests() and service._pending == 0, what="the abort")
    assert len(engine.aborted) == 1 and engine.aborted[0].startswith("r")


async def test_leaving_before_the_first_token_aborts_the_queued_request():
    engine = FakeEngine(step_delay=0.001, max_running=1)
    svc = serve(engine)
    try:
        running = svc.generate(chat("first", max_tokens=10**3, ignore_eos=True))
        await running.__anext__()
        queued = asyncio.create_task(collect(svc, chat("second", max_tokens=5)))
        await wait_until(lambda: engine.num_unfinished_requests() == 2, what="the second request to queue")
        queued.cancel()  # the caller leaves while its request waits for a slot: no token yet
        with pytest.raises(asyncio.CancelledError):
            await queued
        await wait_until(lambda: engine.num_unfinished_requests() == 1, what="the queued request's abort")
        assert len(engine.aborted) == 1 and engine.unfinished_request_ids() != engine.aborted
        await running.aclose()
        await wait_until(lambda: svc._pending == 0, what="the running request's abort")
    finally:
        svc.shutdown()


async def test_admission_limit_answers_overloaded(service):
    gens = [service.generate(chat("x", max_tokens=1000, ignore_eos=True)) for _ in range(2)]
    firsts = [await g.__anext__() for g in gens]
    assert len(firsts) == 2
    with pytest.raises(ServerOverloadedError):
        await collect(service, chat("y", n=3))
    for g in gens:
        await g.aclose()


async def test_default_admission_bound_is_the_engines_running_plus_queued():
    engine = FakeEngine(step_delay=0.001, max_running=2, max_queued=1, max_model_len=10**6)
    svc = serve(engine)
    try:
        assert svc.max_pending == 3
        gens = [svc.generate(chat("x", max_tokens=10**5, ignore_eos=True)) for _ in range(3)]
        for g in gens[:2]:
            await g.__anext__()
        queued = asyncio.create_task(gens[2].__anext__())  # waits for a slot that never frees
        await wait_until(lambda: engine.num_unfinished_requests() == 3, what="the third request to queue")
        with pytest.raises(ServerOverloadedError):
            await collect(svc, chat("y"))
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        for g in gens:
            await g.aclose()
    finally:
        svc.shutdown()


async def test_batches_carry_every_delta_ready_when_the_consumer_lags(service, engine):
    gen = service.generate_batches(chat("abcdefghij", max_tokens=50, temperature=0))
    first = await gen.__anext__()
    # The engine runs ahead while nobody reads: once it has finished, every delta is waiting in the queue.
    await wait_until(lambda: service._pending == 0, what="the engine to finish the request")
    rest = [batch async for batch in gen]
    text = "".join(c.text for c in first + [c for batch in rest for c in batch])
    assert text == "abcdefghij" and len(rest) == 1 and len(rest[0]) > 1


async def test_closing_a_stream_frees_the_engines_slot_for_the_next_request(tmp_path):
    from models.llm.config import EngineConfig
    from models.llm.engine import HFEngine
    from models.llm.loader import load_causal_lm
    from tests.fixtures.tiny_llm import build_tiny_llm

    model, tokenizer = load_causal_lm(build_tiny_llm(str(tmp_path / "m")), dtype="float32")
    engine = HFEngine(model, tokenizer, EngineConfig(max_running=1, max_queued=0))
    svc = serve(engine)
    try:
        gen = svc.generate(chat("hello", max_tokens=200, ignore_eos=True, temperature=0))
        await gen.__anext__()
        with pytest.raises(ServerOverloadedError):  # the only slot is taken, no queue
            await collect(svc, chat("more"))
        await gen.aclose()
        await wait_until(lambda: not engine.has_unfinished_requests() and svc._pending == 0, what="the abort")
        assert engine.scheduler.slots.num_free == 1
        texts, finish = await collect(svc, chat("again", max_tokens=3, ignore_eos=True, temperature=0))
        assert finish == {0: "length"} and texts[0]
    finally:
        svc.shutdown()


# -- an engine that fails ---------------------------------------------------------------------------------------


async def test_a_request_the_engine_refuses_fails_alone_with_its_own_status():
    svc = serve(FaultyEngine(step_delay=0.001))
    try:
        running = svc.generate(chat("keeps going", max_tokens=30, temperature=0))
        first = await running.__anext__()
        with pytest.raises(InvalidRequestError, match="refuses") as refused:
            await collect(svc, chat("ADD-REFUSES"))
        with pytest.raises(ServingError) as failed:
            await collect(svc, chat("ADD-RAISES"))
        assert refused.value.param == "messages"
        assert failed.value.status_code == 500 and failed.value.code == "model_error"
        assert first.text + "".join([c.text async for c in running]) == "keeps going"
        assert svc._pending == 0
    finally:
        svc.shutdown()


async def test_a_step_that_raises_fails_the_requests_in_flight_and_the_engine_goes_on():
    engine = FaultyEngine(step_delay=0.001)
    svc = serve(engine)
    try:
        gens = [svc.generate(chat(text, max_tokens=10**3, ignore_eos=True)) for text in ("a", "STEP-RAISES")]
        results = await asyncio.gather(*(_drain(g) for g in gens), return_exceptions=True)
        assert all(isinstance(r, ServingError) and r.status_code == 500 for r in results)
        assert svc._pending == 0 and not engine.has_unfinished_requests()
        texts, _ = await collect(svc, chat("after", max_tokens=30, temperature=0))
        assert texts == {0: "after"} and svc.engine.core.engine is engine  # the same engine: no restart
    finally:
        svc.shutdown()


async def test_an_engine_whose_steps_keep_failing_is_replaced_and_its_callers_get_503():
    engines = []

    def start():
        engines.append(FaultyEngine(step_delay=0.001))
        return LocalEngine(engines[-1])

    svc = LLMService(start)
    try:
        with pytest.raises(ServingError) as first:
            await collect(svc, chat("BREAK-ENGINE"))
        assert first.value.status_code == 500  # one failed step: this request's
        with pytest.raises(ServingError):
            await collect(svc, chat("second"))  # the second failed step
        with pytest.raises(ModelUnavailableError) as third:  # the third: the engine is broken and replaced
            await collect(svc, chat("third"))
        assert third.value.headers()["Retry-After"] == "1"
        await wait_until(lambda: len(engines) == 2 and svc._available.is_set(), what="the restart")
        assert (await collect(svc, chat("fine again", max_tokens=30, temperature=0)))[0] == {0: "fine again"}
        svc.check_health()
    finally:
        svc.shutdown()


async def test_when_restarts_keep_failing_the_service_reports_unhealthy():
    starts = []

    def start():
        starts.append(1)
        if len(starts) > 1:
            raise RuntimeError("cannot load the model")
        return LocalEngine(FaultyEngine())

    svc = LLMService(start, restarts=RestartPolicy(max_failures=3, max_delay_s=0.01))
    try:
        for text in ("BREAK-ENGINE", "b", "c"):
            with pytest.raises(ServingError):
                await collect(svc, chat(text))
        await wait_until(lambda: svc.error is not None, what="the service to give up")
        assert len(starts) == 1 + 2  # the first start, then two failed restarts (3 failures in a row in all)
        with pytest.raises(RuntimeError, match="cannot load the model"):
            svc.check_health()
        with pytest.raises(ModelUnavailableError):
            await collect(svc, chat("d"))
    finally:
        svc.shutdown()
