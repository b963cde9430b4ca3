"""UpstreamTransport's retries (jittered, only before a first byte) and the chat client's request and event
mapping, without a server: a port nothing listens on, and events given as dicts."""
import pytest

from models.llm.types import SamplingParams
from serving.clients import GenerationRequest
from serving.errors import CircuitOpenError, ModelUnavailableError, UpstreamError
from serving.upstream.breaker import CircuitBreaker
from serving.upstream.chat import ChunkAssembler, request_body
from serving.upstream.config import BreakerConfig, UpstreamConfig
from serving.upstream.transport import UpstreamTransport
from tests.upstream_fakes import free_port


def transport(retries: int, failures: int = 5, problem: str | None = None, **hooks) -> UpstreamTransport:
    config = UpstreamConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", retries=retries, retry_backoff_s=0.1,
                            connect_timeout_s=2)
    breaker = CircuitBreaker(BreakerConfig(failures=failures))
    return UpstreamTransport("m", config, None, breaker, problem=problem, **hooks)


async def call(t: UpstreamTransport) -> None:
    async with t.request("POST", "/embeddings", {"input": "x"}):
        pass


async def test_refused_connections_are_retried_with_jittered_doubling_backoff_then_503():
    bounds, waits = [], []

    def uniform(low, high):
        bounds.append((low, high))
        return high / 2

    async def sleep(seconds):
        waits.append(seconds)

    t = transport(retries=3, uniform=uniform, sleep=sleep)
    with pytest.raises(ModelUnavailableError) as raised:
        await call(t)
    assert str(raised.value) == "the upstream of `m` cannot be reached"  # no host or port for callers ...
    assert bounds == [(0.0, 0.2), (0.0, 0.4), (0.0, 0.8)] and waits == [0.1, 0.2, 0.4]
    circuit = t.breaker.snapshot()
    assert circuit["consecutive_failures"] == 1  # one call, one failure, however many attempts
    assert "ClientConnectorError" in circuit["last_failure"]  # ... the admin's record has the cause
    await t.close()


async def test_retrying_stops_once_the_circuit_opened_meanwhile():
    attempts = []

    async def sleep(seconds):
        attempts.append(seconds)
        t.breaker.failure(t.breaker.acquire(), "another caller's failure")  # opens it (failures=1)

    t = transport(retries=5, failures=1, uniform=lambda low, high: 0.0, sleep=sleep)
    with pytest.raises(CircuitOpenError):
        await call(t)
    assert len(attempts) == 1
    await t.close()


async def test_a_configuration_that_cannot_work_fails_every_call_without_a_connection():
    t = transport(retries=0, problem="the environment variable K is not set")
    with pytest.raises(UpstreamError, match="K is not set") as raised:
        await call(t)
    assert raised.value.status_code == 502 and raised.value.code == "upstream_config"
    assert t.breaker.snapshot()["window_calls"] == 0


def test_request_body_sends_only_what_was_asked_and_maps_logprobs_per_endpoint():
    plain = GenerationRequest("r", SamplingParams(max_tokens=5, temperature=0.0),
                              messages=[{"role": "user", "content": "hi"}])
    path, body = request_body(plain, "remote")
    assert path == "/chat/completions"
    assert body == {"model": "remote", "stream": True, "stream_options": {"include_usage": True},
                    "temperature": 0.0, "top_p": 1.0, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    rich = SamplingParams(max_tokens=None, seed=3, stop=["x"], top_k=5, ignore_eos=True, logprobs=True,
                          top_logprobs=2)
    path, body = request_body(GenerationRequest("r", rich, prompt=[1, 2], n=3), "remote")
    assert path == "/completions" and body["prompt"] == [1, 2] and body["n"] == 3
    assert (body["seed"], body["stop"], body["top_k"], body["ignore_eos"], body["logprobs"]) == (3, ["x"], 5, True, 2)
    assert "max_tokens" not in body and "top_logprobs" not in body
    _, chat = request_body(GenerationRequest("r", rich, messages=[]), "remote")
    assert (chat["logprobs"], chat["top_logprobs"]) == (True, 2)


def chat_event(index, content=None, finish=None, usage=None):
    return {"choices": [{"index": index, "delta": {"content": content}, "finish_reason": finish}], "usage": usage}


def test_assembler_holds_each_finish_until_the_usage_and_spreads_tokens_over_choices():
    a = ChunkAssembler(n=2, chat=True)
    out = a.add(chat_event(0, "he")) + a.add(chat_event(1, "yo")) + a.add(chat_event(0, "llo", "stop"))
    out += a.add(chat_event(1, None, "length"))
    assert [(c.index, c.text, c.finish_reason) for c in out] == [(0, "he", None), (1, "yo", None)]
    a.add({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9}})
    done = a.finish()
    assert [(c.index, c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in done] == [
        (0, "llo", "stop", 7, 2), (1, "", "length", 7, 7)]


def test_assembler_refuses_a_stream_that_ended_before_every_choice_finished():
    a = ChunkAssembler(n=1, chat=False)
    a.add({"choices": [{"index": 0, "text": "abc", "finish_reason": None, "logprobs": {
        "tokens": ["a"], "token_logprobs": [-0.5], "top_logprobs": [{"a": -0.5, "b": -1.5}]}}]})
    with pytest.raises(UpstreamError, match="ended before every choice finished"):
        a.finish()
