"""CircuitBreaker's policy, step by step, on a clock the test moves."""
import pytest

from serving.errors import CircuitOpenError
from serving.upstream.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from serving.upstream.config import BreakerConfig


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def breaker(clock, **settings) -> tuple[CircuitBreaker, list]:
    changes = []
    b = CircuitBreaker(BreakerConfig(**settings), clock, on_change=lambda old, new: changes.append((old, new)))
    return b, changes


def fail(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        b.failure(b.acquire(), "boom")


def test_opens_after_n_consecutive_failures_and_a_success_resets_the_count(clock):
    b, changes = breaker(clock, failures=3, min_requests=100)
    fail(b, 2)
    b.success(b.acquire())
    fail(b, 2)
    assert b.state == CLOSED and changes == []
    fail(b)
    assert b.state == OPEN and changes == [(CLOSED, OPEN)]
    assert b.snapshot()["last_failure"] == "boom" and b.opened_total == 1


def test_opens_on_the_error_rate_over_the_window_only_once_it_has_enough_calls(clock):
    b, _ = breaker(clock, failures=100, error_rate=0.5, window_s=10, min_requests=6)
    for _ in range(2):  # 2 of 4 failed: 50 %, but too few calls to judge
        b.success(b.acquire())
        fail(b)
    assert b.state == CLOSED
    b.success(b.acquire())
    fail(b)  # 3 of 6
    assert b.state == OPEN


def test_calls_older_than_the_window_do_not_count(clock):
    b, _ = breaker(clock, failures=100, error_rate=0.5, window_s=10, min_requests=4)
    fail(b, 3)
    clock.now += 11  # those three leave the window
    b.success(b.acquire())
    b.success(b.acquire())
    fail(b)
    assert b.state == CLOSED and b.snapshot()["window_calls"] == 3


def test_open_refuses_with_retry_after_then_half_opens_after_open_s(clock):
    b, changes = breaker(clock, failures=1, open_s=10)
    fail(b)
    clock.now += 2.5
    with pytest.raises(CircuitOpenError) as refused:
        b.acquire()
    assert refused.value.status_code == 503 and refused.value.code == "circuit_open"
    assert refused.value.headers() == {"Retry-After": "8"}  # 7.5 s left, rounded up
    clock.now += 7.5
    assert b.state == HALF_OPEN and changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_half_open_lets_a_limited_number_of_probes_through_and_a_success_closes(clock):
    b, _ = breaker(clock, failures=1, open_s=1, half_open_probes=1)
    fail(b)
    clock.now += 1
    probe = b.acquire()
    with pytest.raises(CircuitOpenError):  # one probe at a time
        b.acquire()
    b.success(probe)
    assert b.state == CLOSED
    b.acquire()  # closed: calls pass again


def test_a_failed_probe_opens_again_for_another_open_s(clock):
    b, changes = breaker(clock, failures=1, open_s=5)
    fail(b)
    clock.now += 5
    b.failure(b.acquire(), "still down")
    assert b.state == OPEN and b.retry_after() == 5 and b.opened_total == 2
    assert changes[-1] == (HALF_OPEN, OPEN)


def test_a_probe_whose_caller_left_frees_its_slot(clock):
    b, _ = breaker(clock, failures=1, open_s=1)
    fail(b)
    clock.now += 1
    b.release(b.acquire())
    b.success(b.acquire())
    assert b.state == CLOSED


def test_outcomes_of_calls_from_before_a_change_move_nothing(clock):
    b, _ = breaker(clock, failures=2, open_s=1)
    slow = b.acquire()  # let through while closed
    fail(b, 2)
    clock.now += 1  # half-open now
    b.success(slow)  # the old call's success must not close the circuit
    assert b.state == HALF_OPEN
    b.failure(b.acquire(), "down")
    assert b.state == OPEN


def test_health_checks_count_as_calls_and_a_good_one_half_opens_an_open_circuit(clock):
    b, _ = breaker(clock, failures=2, open_s=60)
    b.health(False, "GET /models failed")
    b.health(False, "GET /models failed")
    assert b.state == OPEN
    b.health(True)
    assert b.state == HALF_OPEN  # a real call still has to succeed to close it
    b.success(b.acquire())
    assert b.state == CLOSED
