"""benchmarks.metrics on synthetic timings whose answers are worked out by hand (vLLM's definitions)."""
from __future__ import annotations

import math

import pytest

from benchmarks.metrics import (
    RequestRecord,
    chat_metrics,
    client_load,
    distribution,
    embedding_metrics,
    image_metrics,
    is_good,
    percentile,
    speech_metrics,
)


def stream(start, ttft, gaps, tokens, prompt=10):
    """A successful stream: first text at ttft, then one chunk per gap; latency = ttft + sum(gaps)."""
    return RequestRecord(start=start, success=True, ttft=ttft, itl=list(gaps), latency=ttft + sum(gaps),
                         output_tokens=tokens, prompt_tokens=prompt)


def test_percentile_interpolates_linearly_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)  # rank 0.9 * 3 = 2.7 -> 3 + 0.7 * (4 - 3)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([], 99) == 0.0


def test_distribution_reports_milliseconds_under_vllm_keys():
    d = distribution("ttft", [0.1, 0.2, 0.3, 0.4])
    assert d["mean_ttft_ms"] == pytest.approx(250.0)
    assert d["median_ttft_ms"] == pytest.approx(250.0)
    assert d["std_ttft_ms"] == pytest.approx(math.sqrt(0.0125) * 1000)  # population std, as numpy/vLLM
    assert d["p90_ttft_ms"] == pytest.approx(370.0)
    assert set(d) == {"mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p50_ttft_ms", "p90_ttft_ms", "p99_ttft_ms"}


def test_tpot_excludes_the_first_token():
    r = stream(0, ttft=0.5, gaps=[0.1] * 9, tokens=10)  # latency 1.4 s
    assert r.tpot() == pytest.approx(0.1)  # (1.4 - 0.5) / (10 - 1)
    assert stream(0, ttft=0.5, gaps=[], tokens=1).tpot() is None
    assert RequestRecord(success=True, latency=1.0, output_tokens=5).tpot() is None  # not a stream


def test_chat_metrics_on_known_timings():
    records = [
        stream(0.0, ttft=0.2, gaps=[0.1, 0.1, 0.1], tokens=4, prompt=10),  # latency 0.5, tpot 0.1
        stream(0.5, ttft=0.4, gaps=[0.2, 0.4], tokens=3, prompt=20),  # latency 1.0, tpot 0.3
        RequestRecord(start=1.0, success=False, error_kind="http_429", latency=0.01),
        RequestRecord(start=1.1, success=False, error_kind="timeout", latency=5.0),
        RequestRecord(start=1.2, success=False, error_kind="http_429", latency=0.01),
    ]
    m = chat_metrics(records, duration_s=2.0)
    assert (m["completed"], m["failed"]) == (2, 3)
    assert m["errors"] == {"http_429": 2, "timeout": 1}
    assert m["request_throughput"] == pytest.approx(1.0)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (30, 7)
    assert m["output_throughput"] == pytest.approx(3.5)
    assert m["total_token_throughput"] == pytest.approx(18.5)
    assert m["mean_ttft_ms"] == pytest.approx(300.0)
    assert m["mean_tpot_ms"] == pytest.approx(200.0)
    assert m["median_tpot_ms"] == pytest.approx(200.0)
    # ITL pools every gap: [0.1, 0.1, 0.1, 0.2, 0.4] -> mean 0.18, median 0.1, p99 0.392
    assert m["mean_itl_ms"] == pytest.approx(180.0)
    assert m["median_itl_ms"] == pytest.approx(100.0)
    assert m["p99_itl_ms"] == pytest.approx(392.0)
    assert m["mean_e2el_ms"] == pytest.approx(750.0)  # failures are not in the latency distribution


def test_goodput_counts_requests_meeting_every_slo():
    fast = stream(0, ttft=0.2, gaps=[0.05] * 4, tokens=5)  # tpot 0.05
    slow_first = stream(0, ttft=0.9, gaps=[0.05] * 4, tokens=5)
    slow_decode = stream(0, ttft=0.2, gaps=[0.2] * 4, tokens=5)  # tpot 0.2
    one_token = stream(0, ttft=0.3, gaps=[], tokens=1)  # tpot counts as 0 (vLLM)
    slos = {"ttft": 500.0, "tpot": 100.0}
    assert [is_good(r, slos) for r in (fast, slow_first, slow_decode, one_token)] == [True, False, False, True]
    m = chat_metrics([fast, slow_first, slow_decode, one_token], duration_s=4.0, slos_ms=slos)
    assert m["request_goodput"] == pytest.approx(0.5)
    assert m["goodput_slos_ms"] == slos
    assert is_good(RequestRecord(success=True, latency=0.2), {"e2el": 250}) and not is_good(
        RequestRecord(success=True, latency=0.3), {"e2el": 250})


def test_slo_boundary_is_inclusive():
    assert is_good(stream(0, ttft=0.5, gaps=[], tokens=1), {"ttft": 500.0})


def test_embedding_image_speech_throughputs():
    emb = [RequestRecord(success=True, latency=0.1, items=32, prompt_tokens=320) for _ in range(3)]
    m = embedding_metrics(emb, duration_s=0.5)
    assert m["input_throughput"] == pytest.approx(192.0)
    assert m["total_token_throughput"] == pytest.approx(1920.0)
    img = [RequestRecord(success=True, latency=0.5, items=2), RequestRecord(success=False, error_kind="http_400")]
    m = image_metrics(img, duration_s=1.0)
    assert (m["total_images"], m["image_throughput"], m["errors"]) == (2, 2.0, {"http_400": 1})
    speech = [RequestRecord(success=True, latency=0.5, ttfb=0.2, audio_s=5.0),
              RequestRecord(success=True, latency=1.0, ttfb=0.4, audio_s=5.0)]
    m = speech_metrics(speech, duration_s=1.0)
    assert m["rtfx"] == pytest.approx(10.0)  # audio seconds per wall second
    assert m["mean_rtf"] == pytest.approx(0.15)  # latency / audio: 0.1 and 0.2
    assert m["median_ttfb_ms"] == pytest.approx(300.0)


def test_client_load_flags_a_busy_event_loop():
    quiet = client_load(cpu_s=1.0, wall_s=10.0, machine_busy=0.5, cores=2)
    assert quiet["client_core_utilization"] == pytest.approx(0.1)
    assert quiet["client_machine_share"] == pytest.approx(0.05)
    assert not quiet["client_bound"] and quiet["machine_cpu_busy"] == 0.5
    assert client_load(cpu_s=8.0, wall_s=10.0, machine_busy=None, cores=2)["client_bound"]
