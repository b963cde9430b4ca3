"""The engine in a child process: typed messages, per-request isolation in the child, and the service's answer to
a dead, hung or never-ready engine (503, restart). Waits are predicates with deadlines; each child starts in <1 s."""
import asyncio
import itertools
import os
import signal

import pytest

from models.llm.fake import FakeEngine
from models.llm.types import SamplingParams
from serving.clients import GenerationRequest
from serving.errors import InvalidRequestError, ModelUnavailableError, ServingError
from serving.metrics.models import EngineLoad, engine_load
from serving.services.engine_messages import AddRequest, RequestFailed, StepOutputs
from serving.services.engine_process import EngineProcess, EngineStartError
from serving.services.llm import LLMService
from tests.fixtures.faulty_llm import build_faulty
from tests.waiting import wait_until

_ids = itertools.count()


def chat(text: str, **params) -> GenerationRequest:
    return GenerationRequest(f"p{next(_ids)}", SamplingParams(**params), messages=[{"role": "user", "content": text}])


async def collect(service, request) -> str:
    return "".join([chunk.text async for chunk in service.generate(request)])


@pytest.fixture
def faulty():
    """A service over a FaultyEngine in a child process (16 running, 1 ms steps); restarts start a new child."""
    starts = []

    def start():
        starts.append(EngineProcess(build_faulty, (16, 256, 0.001), step_timeout_s=2))
        return starts[-1]

    svc = LLMService(start)
    svc.starts = starts
    yield svc
    svc.shutdown()
    assert all(p._process.poll() is not None for p in starts), "an engine process outlived the service"


def test_the_pipe_speaks_typed_messages():
    engine = EngineProcess(build_faulty, (1, 1, 0.0))
    try:
        prompt = engine.info.tokenizer.encode("hi")
        engine.add(AddRequest("a", prompt, SamplingParams(max_tokens=1)))
        engine.add(AddRequest("b", engine.info.tokenizer.encode("ADD-REFUSES"), SamplingParams(max_tokens=1)))
        events = []
        while engine.has_unfinished():
            events += engine.step()
        outputs = [o for e in events if isinstance(e, StepOutputs) for o in e.outputs]
        failures = [e for e in events if isinstance(e, RequestFailed)]
        assert [(o.request_id, o.finished) for o in outputs] == [("a", True)]
        assert [(f.request_id, type(f.error).__name__, f.error.param) for f in failures] == [
            ("b", "ModelInputError", "messages")]
    finally:
        engine.close()


def test_requests_added_together_start_in_the_same_step():
    """add_many is one message: the child admits every request before it steps (n choices of one request)."""
    engine = EngineProcess(build_faulty, (16, 256, 0.0))
    sent = []
    send = engine._send
    engine._send = lambda message: (sent.append(message), send(message))
    try:
        prompt = engine.info.tokenizer.encode("hi")
        for round_ in range(20):  # separate messages would let the child step between them now and then
            ids = [f"r{round_}-{i}" for i in range(4)]
            engine.add_many([AddRequest(rid, prompt, SamplingParams(max_tokens=2)) for rid in ids])
            steps = []
            while not steps:
                steps = [e for e in engine.step() if isinstance(e, StepOutputs) and e.outputs]
            assert sorted({o.request_id for o in steps[0].outputs}) == ids  # the first step that produced anything
            while engine.has_unfinished():
                engine.step()
        assert len(sent) == 20 and all(len(message) == 4 for message in sent)  # one message per add_many
    finally:
        engine.close()


async def test_an_engine_in_a_child_process_streams_aborts_and_refuses_like_one_in_process():
    svc = LLMService(lambda: EngineProcess(FakeEngine, (None, 2048, 1, 1, 0.002)))  # tokenizer, len, running, queued
    try:
        assert svc.max_pending == 2 and svc.engine.info.tokenizer.eos_token_id == 2
        assert await collect(svc, chat("from the child", max_tokens=50, temperature=0)) == "from the child"
        with pytest.raises(InvalidRequestError):  # checked on the caller's side, before the engine
            await collect(svc, chat("hi", max_tokens=10**6))
        gen = svc.generate(chat("long", max_tokens=1000, ignore_eos=True))
        await gen.__anext__()
        await gen.aclose()  # aborted in the child
        await wait_until(lambda: not svc.engine.has_unfinished() and svc._pending == 0, what="the abort")
        assert await collect(svc, chat("again", max_tokens=50, temperature=0)) == "again"
    finally:
        svc.shutdown()
    assert not svc.engine.is_alive()


def test_an_engine_process_that_fails_to_build_raises_its_error_in_the_parent():
    with pytest.raises(EngineStartError, match="failed to start(.|\n)*invalid literal"):
        EngineProcess(int, ("not a number",))  # the child's build raises ValueError


def test_an_engine_process_that_is_never_ready_is_killed_after_the_start_timeout():
    with pytest.raises(EngineStartError, match="not ready after 1 s"):
        EngineProcess(__import__("time").sleep, (600,), start_timeout_s=1)


async def test_bad_requests_fail_alone_in_the_child_and_its_engine_goes_on(faulty):
    running = faulty.generate(chat("keeps going", max_tokens=40, temperature=0))
    first = await running.__anext__()
    with pytest.raises(InvalidRequestError, match="refuses"):
        await collect(faulty, chat("ADD-REFUSES"))
    with pytest.raises(ServingError) as add_failed:
        await collect(faulty, chat("ADD-RAISES"))
    with pytest.raises(ServingError) as step_failed:
        await collect(faulty, chat("STEP-RAISES", max_tokens=10**3, ignore_eos=True))
    assert add_failed.value.status_code == step_failed.value.status_code == 500
    # The failing step also failed the request running beside it (a step is not attributable to one request).
    with pytest.raises(ServingError):
        async for _ in running:
            pass
    assert first.text == "k"
    assert await collect(faulty, chat("still the same engine", max_tokens=40, temperature=0)) == "still the same engine"
    assert len(faulty.starts) == 1 and faulty.engine.is_alive()


async def test_a_killed_engine_answers_503_then_comes_back(faulty):
    streams = [faulty.generate(chat(f"s{i}", max_tokens=10**3, ignore_eos=True)) for i in range(3)]
    for s in streams:
        await s.__anext__()
    os.kill(faulty.engine.pid, signal.SIGKILL)
    for s in streams:  # in flight: a 503 with Retry-After, never a 500
        with pytest.raises(ModelUnavailableError) as e:
            async for _ in s:
                pass
        assert e.value.status_code == 503 and "Retry-After" in e.value.headers()
    await wait_until(lambda: len(faulty.starts) == 2 and faulty._available.is_set(), what="the restart")
    assert await collect(faulty, chat("back", max_tokens=20, temperature=0)) == "back"
    faulty.check_health()
    assert faulty._pending == 0


async def test_new_requests_get_503_while_the_engine_restarts():
    release = asyncio.Event()
    starts = []

    def start():  # the second start waits for the test, so that the restart is seen in progress
        if starts and not release.is_set():
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(30)
        starts.append(EngineProcess(build_faulty, (4, 4, 0.001)))
        return starts[-1]

    loop = asyncio.get_running_loop()
    svc = LLMService(start)
    try:
        os.kill(svc.engine.pid, signal.SIGKILL)  # while idle: noticed by the idle check
        await wait_until(lambda: not svc._available.is_set(), what="the death to be noticed")
        with pytest.raises(ModelUnavailableError) as e:
            await collect(svc, chat("too early"))
        assert "restarting" in e.value.message and int(e.value.headers()["Retry-After"]) >= 1
        release.set()
        await wait_until(lambda: svc._available.is_set(), what="the restart")
        assert await collect(svc, chat("now", max_tokens=20, temperature=0)) == "now"
    finally:
        release.set()
        svc.shutdown()


async def test_a_hung_engine_is_killed_by_the_watchdog_and_restarted(faulty):
    with pytest.raises(ModelUnavailableError):
        await collect(faulty, chat("STEP-HANGS"))  # no step ends within step_timeout_s (2 s)
    hung = faulty.starts[0]
    await wait_until(lambda: len(faulty.starts) == 2 and faulty._available.is_set(), what="the restart")
    assert hung._process.poll() is not None
    assert await collect(faulty, chat("unstuck", max_tokens=20, temperature=0)) == "unstuck"


async def test_a_busy_child_reports_its_engines_stats(faulty):
    assert faulty.engine.stats is not None and faulty.engine.stats.steps == 0  # the engine as loaded
    await collect(faulty, chat("count my steps", max_tokens=50, temperature=0))
    await wait_until(lambda: faulty.engine.stats.steps >= 1, what="a stats report")


async def test_an_engine_that_falls_idle_reports_it_and_the_gauges_read_that_report():
    """The gauges of ChatDeployment read the engine's last report: one sent when the engine falls idle, so a
    finished burst never shows as still running (reports while busy come at most once a second)."""
    svc = LLMService(lambda: EngineProcess(FakeEngine, (None, 2048, 4, 4, 0.002)))
    try:
        streams = [svc.generate(chat(f"s{i}", max_tokens=10**3, ignore_eos=True)) for i in range(3)]
        for s in streams:
            await s.__anext__()
        for s in streams:
            await s.aclose()
        assert await collect(svc, chat("last one", max_tokens=50, temperature=0)) == "last one"
        await wait_until(lambda: svc.engine.stats is not None and svc.engine.stats.finished_requests == 1
                         and svc.engine.stats.aborted_requests == 3, what="the idle engine's report")
        assert engine_load(svc.engine.stats) == EngineLoad(running=0, waiting=0, kv_cache_usage=0.0)
    finally:
        svc.shutdown()


async def test_a_seed_torch_cannot_take_fails_that_request_only_and_the_real_engine_goes_on(tmp_path):
    """Issue 11: `"seed": 2**70` used to kill the engine process (torch.manual_seed raises), and every request
    after it failed until the replica was replaced."""
    from tests.fixtures.faulty_llm import build_tiny_hf_engine
    from tests.fixtures.tiny_llm import build_tiny_llm

    svc = LLMService(lambda: EngineProcess(build_tiny_hf_engine, (build_tiny_llm(str(tmp_path / "m")),)))
    try:
        pid = svc.engine.pid
        with pytest.raises(ServingError) as e:  # a 400 once the seed is checked before the engine, else a 500
            await collect(svc, chat("hello", seed=2**70, max_tokens=4))
        assert e.value.status_code in (400, 500) and not isinstance(e.value, ModelUnavailableError)
        assert await collect(svc, chat("hello", seed=7, max_tokens=4, temperature=1.0))
        assert svc.engine.pid == pid  # the same engine process answered
    finally:
        svc.shutdown()
