"""The model replicas' metric hooks: a generation stream observed on its way out, a batch merger's passes and
queue, engine gauges. Each test uses its own model label (the registry is this process')."""
import asyncio
import threading

from serving.clients import GenerationChunk
from serving.deployments.merge import BatchMerger
from serving.metrics.definitions import REGISTRY
from serving.metrics.models import EngineLoad, engine_load, observe_generation, watch_engine, watch_merger
from tests.fixtures.clock import until


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def chunk(index: int, done: int, finish: str | None = None, prompt: int = 7) -> GenerationChunk:
    return GenerationChunk(index=index, text="x", token_ids=[1], logprobs=None, finish_reason=finish,
                           prompt_tokens=prompt, completion_tokens=done)


async def batches(items):
    for item in items:
        yield item


async def test_a_generation_counts_like_its_usage_and_each_choice_finish():
    stream = [[chunk(0, 1), chunk(1, 1)], [chunk(0, 2), chunk(1, 2, "length")], [chunk(0, 3, "stop")]]
    got = [b async for b in observe_generation("hook-a", batches(stream))]
    assert got == stream
    assert value("openserve:prompt_tokens_total", model="hook-a") == 7  # once per request, as `usage` counts
    assert value("openserve:generation_tokens_total", model="hook-a") == 5
    assert value("openserve:request_success_total", model="hook-a", finished_reason="stop") == 1
    assert value("openserve:request_success_total", model="hook-a", finished_reason="length") == 1
    assert value("openserve:time_to_first_token_seconds_count", model="hook-a") == 1
    assert value("openserve:request_time_per_output_token_seconds_count", model="hook-a") == 1


async def test_a_stream_cut_short_is_an_abort_and_one_refused_before_its_first_token_records_nothing():
    stream = observe_generation("hook-b", batches([[chunk(0, 1)], [chunk(0, 2)], [chunk(0, 3, "stop")]]))
    assert await anext(stream) == [chunk(0, 1)]
    await stream.aclose()  # the client left
    assert value("openserve:request_success_total", model="hook-b", finished_reason="abort") == 1
    assert value("openserve:generation_tokens_total", model="hook-b") == 1

    async def refused():
        raise ValueError("bad input")
        yield  # pragma: no cover

    try:
        async for _ in observe_generation("hook-c", refused()):
            pass
    except ValueError:
        pass
    assert value("openserve:time_to_first_token_seconds_count", model="hook-c") == 0
    assert value("openserve:prompt_tokens_total", model="hook-c") == 0


async def test_a_merger_reports_each_pass_and_what_waits_for_the_next():
    entered, release = threading.Event(), threading.Event()

    def run(items):
        entered.set()
        release.wait(10)
        return items

    merger = BatchMerger(run, max_items=8)
    merger.on_pass = watch_merger("hook-d", merger)
    first = asyncio.create_task(merger.submit(1))
    await until(entered.is_set)  # the first pass is running: the next calls wait for it
    waiting = [asyncio.create_task(merger.submit(i)) for i in range(6)]
    await until(lambda: merger.pending() == 6)
    assert value("openserve:batch_queue_depth", model="hook-d") == 6
    release.set()
    await asyncio.gather(first, *waiting)
    assert value("openserve:batch_size_count", model="hook-d") == 2  # a pass of 1, then one of the 6 merged
    assert value("openserve:batch_size_sum", model="hook-d") == 7
    assert value("openserve:batch_queue_depth", model="hook-d") == 0


def test_engine_gauges_read_the_engine_when_collected():
    load = EngineLoad(running=3, waiting=2, kv_cache_usage=0.25)
    watch_engine("hook-e", lambda: load)
    assert (value("openserve:num_requests_running", model="hook-e"),
            value("openserve:num_requests_waiting", model="hook-e"),
            value("openserve:kv_cache_usage_perc", model="hook-e")) == (3, 2, 0.25)


def test_engine_load_from_an_engine_stats_snapshot():
    class Stats:  # the fields of models.llm.types.EngineStats that the gauges read
        running, waiting, kv_slots_used, kv_slots_total = 4, 1, 4, 16

    assert engine_load(Stats()) == EngineLoad(running=4, waiting=1, kv_cache_usage=0.25)
    assert engine_load(None) == EngineLoad()
