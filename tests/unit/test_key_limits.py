"""Per-key limits on a virtual clock: buckets, debts, concurrency, OpenAI's headers and 429 bodies."""
import pytest

from serving.api.errors import error_payload
from serving.errors import RateLimitExceededError
from serving.keys.limits import KeyLimiter, duration
from serving.keys.records import KeyLimits
from tests.fixtures.clock import ManualClock



def test_requests_per_minute_is_a_burst_then_an_even_refill():
    clock = ManualClock(1000.0)
    limiter = KeyLimiter(KeyLimits(requests_per_minute=6), clock)
    for _ in range(6):
        limiter.admit()
        limiter.release(0)
    with pytest.raises(RateLimitExceededError) as refused:
        limiter.admit()
    assert refused.value.error_type == "requests" and refused.value.retry_after == pytest.approx(10.0)
    clock.now += 9.9
    with pytest.raises(RateLimitExceededError):
        limiter.admit()
    clock.now += 0.1  # one request refills every 60 / 6 = 10 s
    limiter.admit()


def test_tokens_are_charged_when_a_request_ends_and_a_debt_is_waited_out():
    clock = ManualClock(1000.0)
    limiter = KeyLimiter(KeyLimits(tokens_per_minute=60), clock)  # one token a second
    limiter.admit()
    limiter.release(100)  # 60 - 100: 40 tokens in debt
    with pytest.raises(RateLimitExceededError) as refused:
        limiter.admit()
    assert refused.value.error_type == "tokens"
    assert refused.value.retry_after == pytest.approx(41.0)  # until one token is there again
    clock.now += 41
    limiter.admit()


def test_concurrent_requests_are_bounded_and_a_slot_frees_on_release():
    limiter = KeyLimiter(KeyLimits(max_concurrent=2), ManualClock(1000.0))
    limiter.admit()
    limiter.admit()
    with pytest.raises(RateLimitExceededError):
        limiter.admit()
    limiter.release(0)
    limiter.admit()


def test_a_refused_request_takes_nothing():
    clock = ManualClock(1000.0)
    limiter = KeyLimiter(KeyLimits(requests_per_minute=2, max_concurrent=1), clock)
    limiter.admit()
    with pytest.raises(RateLimitExceededError):  # refused for concurrency: its request is not taken
        limiter.admit()
    limiter.release(0)
    limiter.admit()  # the second of two requests per minute


def test_429_has_openai_body_retry_after_and_ratelimit_headers():
    clock = ManualClock(1000.0)
    limiter = KeyLimiter(KeyLimits(requests_per_minute=3, tokens_per_minute=1000), clock)
    for _ in range(3):
        limiter.admit()
        limiter.release(10)
    with pytest.raises(RateLimitExceededError) as refused:
        limiter.admit()
    status, body = error_payload(refused.value)
    assert status == 429
    assert body["error"]["type"] == "requests" and body["error"]["code"] == "rate_limit_exceeded"
    assert "Please try again in 20s" in body["error"]["message"]
    headers = refused.value.headers()
    assert headers["Retry-After"] == "20" and headers["retry-after-ms"] == "20000"
    assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"
    assert headers["x-ratelimit-limit-tokens"] == "1000" and headers["x-ratelimit-remaining-tokens"] == "970"
    assert headers["x-ratelimit-reset-tokens"] == "1.8s"


def test_durations_read_like_openais():
    assert [duration(s) for s in (0.0123, 1.0, 1.5, 59.9991, 60, 361)] == ["13ms", "1s", "1.5s", "60s", "1m0s",
                                                                          "6m1s"]
