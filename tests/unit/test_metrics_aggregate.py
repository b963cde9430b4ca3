"""Metrics of several processes add up exactly at the hub; gauges of a silent process drop out, its counts stay."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics.hub import HubState
from serving.metrics.snapshot import merge, render, snapshot
from tests.fixtures.clock import ManualClock


def process_registry(requests: int, latencies: list[float], running: int) -> CollectorRegistry:
    """What one process would hold: the same definitions (same buckets) as every other process."""
    registry = CollectorRegistry()
    counter = Counter("openserve:requests", "r", ["model", "status"], registry=registry)
    histogram = Histogram("openserve:ttft_seconds", "t", ["model"], buckets=(0.1, 1.0), registry=registry)
    gauge = Gauge("openserve:num_requests_running", "g", ["model"], registry=registry)
    counter.labels("m", "200").inc(requests)
    for value in latencies:
        histogram.labels("m").observe(value)
    gauge.labels("m").set(running)
    return registry


def samples(text: bytes) -> dict:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out



def test_counters_histograms_and_gauges_add_up_over_processes_and_repeated_pushes_count_once():
    hub = HubState(stale_s=5, clock=ManualClock())
    a = process_registry(3, [0.05, 0.5], running=2)
    b = process_registry(4, [2.0], running=1)
    hub.push("a", snapshot(a))
    hub.push("a", snapshot(a))  # a repeated push replaces, never adds
    hub.push("b", snapshot(b))
    got = samples(render(hub.families()))
    assert got[("openserve:requests_total", (("model", "m"), ("status", "200")))] == 7
    assert got[("openserve:ttft_seconds_bucket", (("le", "0.1"), ("model", "m")))] == 1
    assert got[("openserve:ttft_seconds_bucket", (("le", "1.0"), ("model", "m")))] == 2
    assert got[("openserve:ttft_seconds_bucket", (("le", "+Inf"), ("model", "m")))] == 3
    assert got[("openserve:ttft_seconds_count", (("model", "m"),))] == 3
    assert abs(got[("openserve:ttft_seconds_sum", (("model", "m"),))] - 2.55) < 1e-9
    assert got[("openserve:num_requests_running", (("model", "m"),))] == 3
    assert not any(name.endswith("_created") for name, _ in got)


def test_a_silent_process_keeps_its_counts_but_not_its_gauges():
    clock = ManualClock()
    hub = HubState(stale_s=5, clock=clock)
    hub.push("dead", snapshot(process_registry(5, [0.5], running=4)))
    clock.now = 3.0
    hub.push("alive", snapshot(process_registry(1, [], running=1)))
    clock.now = 6.0  # "dead" last pushed 6 s ago, "alive" 3 s ago
    got = samples(render(hub.families()))
    assert got[("openserve:requests_total", (("model", "m"), ("status", "200")))] == 6
    assert got[("openserve:num_requests_running", (("model", "m"),))] == 1


def test_the_ingress_replaces_its_pushed_copy_by_its_live_numbers():
    hub = HubState(clock=ManualClock())
    ingress = process_registry(2, [], running=0)
    hub.push("ingress", snapshot(ingress))
    hub.push("replica", snapshot(process_registry(1, [], running=0)))
    ingress_live = process_registry(10, [], running=0)  # it has answered more since its last push
    got = samples(render(merge([snapshot(ingress_live), hub.families(exclude="ingress")])))
    assert got[("openserve:requests_total", (("model", "m"), ("status", "200")))] == 11


def test_rendered_histogram_buckets_are_in_ascending_order_per_series():
    registry = CollectorRegistry()
    h = Histogram("x_seconds", "x", ["model"], buckets=(0.5, 2.0, 10.0), registry=registry)
    h.labels("b").observe(1)
    h.labels("a").observe(3)
    lines = [ln for ln in render(merge([snapshot(registry)])).decode().splitlines() if "_bucket" in ln]
    for model in ("a", "b"):
        bounds = [ln.split('le="')[1].split('"')[0] for ln in lines if f'model="{model}"' in ln]
        assert bounds == ["0.5", "2.0", "10.0", "+Inf"]
