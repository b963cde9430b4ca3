"""What the bench tool derives from finished runs: the suite's checks, the overhead summary, the terminal table."""
from __future__ import annotations

import pytest

from benchmarks import overhead, report, suite


def run(target, scenario, modality="embeddings", **metrics):
    base = {"completed": 10, "failed": 0, "client_core_utilization": 0.1, "client_bound": False}
    return {"target": target, "scenario": scenario, "modality": modality, "params": {}, "metrics": {**base, **metrics}}


def test_suite_checks_take_medians_and_compare_with_targets():
    runs = [
        run("default", "c=16 x32", input_throughput=450.0), run("default", "c=16 x32", input_throughput=470.0),
        run("default", "c=64 x1", input_throughput=300.0), run("unbatched", "c=64 x1", input_throughput=100.0),
        run("default", "c=8 64x64 2 steps", "images", image_throughput=14.0),
        run("unbatched", "c=8 64x64 2 steps", "images", image_throughput=10.0),
    ]
    found = [  # in-process encode at batch 128: three taken between the server runs, one with the servers stopped
        {"batch_size": 128, "servers": "default idle", "input_throughput": v} for v in (480.0, 500.0, 620.0)
    ] + [{"batch_size": 128, "servers": "stopped", "input_throughput": 600.0},
         {"batch_size": 1, "servers": "stopped", "input_throughput": 100.0}]
    checks = {c["check"].split(":")[0] + str(i): c for i, c in enumerate(suite.checks(runs, found))}
    emb_raw, emb_quiet, emb_batch, images, speech = checks.values()
    assert emb_raw["value"] == pytest.approx(460.0) and emb_raw["reference"] == 500.0  # medians
    assert emb_raw["ratio"] == pytest.approx(0.92) and emb_raw["met"] and not emb_raw.get("informational")
    assert emb_quiet["ratio"] == pytest.approx(460.0 / 600.0) and not emb_quiet["met"] and emb_quiet["informational"]
    assert emb_batch["ratio"] == pytest.approx(3.0) and emb_batch["met"]
    assert images["ratio"] == pytest.approx(1.4) and not images["met"]
    assert speech["ratio"] is None and not speech["met"]  # not measured: never reported as met
    assert "| no (info) |" in suite.markdown({"machine": {"cpu_model": "x", "logical_cores": 2, "memory_gb": 24},
                                       "git": {"commit": "abc", "dirty": False}, "started_at": "now",
                                       "checks": list(checks.values())})


def test_overhead_summary_relates_each_stack_to_the_bare_floor():
    runs = [run("bare-uvicorn", "c=1", request_throughput=2000.0, median_e2el_ms=0.5),
            run("bare-uvicorn", "c=1", request_throughput=4000.0, median_e2el_ms=0.3),
            run("ray-full", "c=1", request_throughput=60.0, median_e2el_ms=16.4, server_cpu_ms_per_request=20.0)]
    s = overhead.summary(runs)["c=1"]
    assert s["bare-uvicorn"]["request_throughput"] == 3000.0  # median of the repetitions
    assert s["ray-full"]["throughput_vs_bare"] == pytest.approx(0.02)
    assert s["ray-full"]["added_p50_ms"] == pytest.approx(16.0)


def test_overhead_summary_gives_what_operating_costs_against_the_quiet_stack():
    runs = [run("ray-quiet", "c=32", request_throughput=500.0, median_e2el_ms=60.0),
            run("ray-operated", "c=32", request_throughput=480.0, median_e2el_ms=62.0)]
    s = overhead.summary(runs)["c=32"]
    assert s["ray-operated"]["throughput_vs_quiet"] == pytest.approx(0.96)
    assert "throughput_vs_quiet" not in s["ray-quiet"]


def test_table_has_a_row_per_run_and_flags_a_bound_client():
    runs = [run("server", "c=1 x1", request_throughput=10.0, input_throughput=10.0, median_e2el_ms=5.0,
                p90_e2el_ms=6.0, p99_e2el_ms=7.0),
            run("server", "c=64 x1", request_throughput=99.0, input_throughput=99.0, client_core_utilization=0.9,
                client_bound=True)]
    text = report.table(runs)
    assert "== embeddings ==" in text and "c=64 x1" in text and "90% BOUND" in text
    assert len(report.client_warnings(runs)) == 1
