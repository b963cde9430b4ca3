"""CUDA graphs captured at load: the real capture code of cuda_graphs.py against a fake torch.cuda graph API that
records the captured ops and reruns them on replay (tests/fixtures/fake_cuda_graphs.py), on the CPU."""
import pytest
import torch

from models.errors import FastPathError
from models.llm import engine as engine_module
from models.llm.config import EngineConfig
from models.llm.cuda_graphs import len_buckets, slot_buckets
from models.llm.engine import HFEngine
from models.llm.loader import load_causal_lm
from models.llm.model_runner import BatchedModelRunner, enable_slot_attention
from models.llm.types import SamplingParams
from tests.fixtures.fake_cuda_graphs import FakeGraphApi
from tests.fixtures.tiny_llm import build_tiny_llm

SLOT_LEN = 300  # length buckets 256 and 300


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    model, tok = load_causal_lm(build_tiny_llm(str(tmp_path_factory.mktemp("tiny_llm"))), dtype="float32")
    enable_slot_attention(model)  # what HFEngine does before building its runner
    return model, tok


class Request:
    """The EngineRequest fields the runner reads; `computed` tokens already in the cache (default: all but the
    last, a decode)."""

    def __init__(self, slot: int, tokens: list[int], computed: int | None = None):
        self.slot, self.token_ids = slot, tokens
        self.num_computed = len(tokens) - 1 if computed is None else computed

    @property
    def num_pending(self) -> int:
        return len(self.token_ids) - self.num_computed

    def pending_tokens(self, count: int) -> list[int]:
        return self.token_ids[self.num_computed: self.num_computed + count]


Decode = Request


def graph_runner(model, api, slots=8, strict=False):
    return BatchedModelRunner(model, slots, SLOT_LEN, cuda_graphs=True, strict=strict, graph_api=api)


def test_bucket_lists():
    assert slot_buckets(5) == [1, 2, 4, 5] and slot_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert slot_buckets(256) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 96, 128, 160, 192, 224, 256]
    assert len_buckets(1000) == [256, 512, 1000] and len_buckets(256) == [256]


def test_every_graph_is_captured_once_at_load_largest_first_and_none_while_serving(loaded):
    model, _ = loaded
    api = FakeGraphApi()
    runner = graph_runner(model, api)
    keys = [(s, n) for s in (8, 4, 2, 1) for n in (300, 256)]
    assert sorted(runner.graphs.graphs, reverse=True) == keys and len(api.graphs) == len(keys)
    assert list(runner.graphs.graphs) == keys  # captured in that order: the largest sizes the shared pool
    with torch.inference_mode():
        runner.execute([(Decode(0, [5, 6, 7]), 1), (Decode(1, [8, 9]), 1)])
        runner.execute([(Decode(0, [5, 6, 7, 10]), 1)])
    assert len(api.graphs) == len(keys)  # no capture while serving
    assert sum(g.replays for g in api.graphs) == 2


def test_fragmented_slots_replay_the_bucket_covering_the_highest_live_slot(loaded):
    model, _ = loaded
    runner = graph_runner(model, FakeGraphApi())
    graphs = runner.graphs.graphs
    with torch.inference_mode():
        runner.execute([(Decode(0, [5, 6]), 1), (Decode(5, [7, 8]), 1)])  # slots 0 and 5 live: the view needs 6
        assert [k for k, g in graphs.items() if g.replays] == [(8, 256)]
        runner.execute([(Decode(2, [7, 8]), 1)])
        assert graphs[(4, 256)].replays == 1 and graphs[(2, 256)].replays == 0


def test_graph_logits_equal_eager_ones_and_survive_the_next_replay(loaded):
    model, _ = loaded
    graph = graph_runner(model, FakeGraphApi())
    eager = BatchedModelRunner(model, 8, SLOT_LEN, cuda_graphs=False)
    eager.cache.ensure_initialized(SLOT_LEN)
    prompts = {0: [5, 6, 7, 8], 3: [9, 10, 11], 4: [12, 13, 14, 15, 16]}
    with torch.inference_mode():
        for runner in (graph, eager):  # the same prefills into both caches
            runner.execute([(Request(slot, tokens, computed=0), len(tokens)) for slot, tokens in prompts.items()])
        step = [(Decode(slot, tokens + [20 + slot]), 1) for slot, tokens in prompts.items()]
        first = graph.execute(step)[1]
        kept = first.clone()
        _, expected = eager.execute(step)
        graph.execute([(Decode(1, [30, 31]), 1)])  # another replay overwrites the shared logits buffer
    assert torch.equal(first, kept)  # what was returned is a copy
    assert torch.allclose(first, expected, atol=1e-5) and torch.equal(first.argmax(-1), expected.argmax(-1))


def greedy_outputs(engine, prompts):
    for rid, prompt in prompts.items():
        engine.add_request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    got = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
    return got


def test_an_engine_on_graphs_gives_the_eager_engine_tokens_and_reports_its_path(loaded, monkeypatch):
    model, tok = loaded
    prompts = {f"r{i}": list(range(10 + i, 14 + 3 * i)) for i in range(3)}
    eager = HFEngine(model, tok, EngineConfig(max_running=4, max_model_len=SLOT_LEN, cuda_graphs=False))
    expected = greedy_outputs(eager, prompts)
    api = FakeGraphApi()

    class FakeGraphRunner(BatchedModelRunner):  # what the engine builds on CUDA, with the fake graph API
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs, graph_api=api)

    monkeypatch.setattr(engine_module, "BatchedModelRunner", FakeGraphRunner)
    engine = HFEngine(model, tok, EngineConfig(max_running=4, max_model_len=SLOT_LEN))
    assert greedy_outputs(engine, prompts) == expected
    assert sum(g.replays for g in api.graphs) > 0
    stats = engine.stats()
    assert (stats.batched, stats.cuda_graphs_on, stats.cuda_graphs) == (True, True, len(api.graphs))
    assert len(api.graphs) == 3  # slot buckets 1, 2, 4 x one length bucket (the tiny model allows 256 tokens)
    assert (eager.stats().cuda_graphs_on, eager.stats().cuda_graphs) == (False, 0)


def test_a_capture_failure_turns_graphs_off_with_the_reason_or_fails_the_load_when_strict(loaded):
    model, _ = loaded
    runner = graph_runner(model, FakeGraphApi(fail_on=2))
    graphs = runner.graphs
    assert not graphs.enabled and graphs.num_captured == 2
    assert "capture of 4 slots x 300 tokens failed: RuntimeError: CUDA out of memory (fake)" in graphs.failure
    with torch.inference_mode():
        requests, logits = runner.execute([(Decode(0, [5, 6]), 1)])  # eager, still correct
    assert requests[0].slot == 0 and logits.shape[0] == 1
    with pytest.raises(FastPathError, match="capture of 8 slots x 300 tokens failed.*options.strict"):
        graph_runner(model, FakeGraphApi(fail_on=0), strict=True)


def test_a_host_sync_inside_the_captured_forward_is_a_capture_failure(loaded):
    """The fake refuses .item() while capturing, as CUDA does: a model that syncs cannot be captured."""
    model, _ = loaded

    def syncing_forward(ids, positions, batch, keep):
        return torch.ones(ids.shape[1], vocab) * float(ids.sum())  # float(tensor): .item(), a host sync

    runner = graph_runner(model, FakeGraphApi())
    vocab = runner.graphs.logits.shape[1]
    runner.graphs.forward = syncing_forward
    runner.graphs.graphs.clear()
    runner.graphs.capture_all()
    assert not runner.graphs.enabled and "syncs with the host" in runner.graphs.failure


def test_captures_stop_at_the_graph_memory_budget_and_uncaptured_steps_run_eagerly(loaded):
    model, _ = loaded
    runner = graph_runner(model, FakeGraphApi())
    graphs = runner.graphs
    graphs.graphs.clear()
    graphs.budget_bytes = int(2.5 * 2**30)
    assert graphs.capture_all(used_bytes=lambda: len(graphs.graphs) * 2**30) == 3  # 1 GiB a graph, pretend
    assert list(graphs.graphs) == [(8, 300), (8, 256), (4, 300)] and graphs.enabled
    with torch.inference_mode():
        assert graphs.run([Decode(0, [5, 6])]) is None  # (1, 256) was not captured: the runner goes eager
        requests, logits = runner.execute([(Decode(0, [5, 6]), 1)])
    assert logits.shape[0] == 1 and all(g.replays == 0 for g in graphs.graphs.values())
