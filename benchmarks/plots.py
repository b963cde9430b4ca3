"""PNG plots with matplotlib (the `bench` extra): latency CDFs per run, and one plot per metric for a sweep."""
from __future__ import annotations

import os
import statistics
from collections import defaultdict

# The sweep plots: metric key -> axis label, per modality.
SWEEP_METRICS = {
    "chat": {"output_throughput": "output tokens/s", "request_throughput": "requests/s",
             "median_ttft_ms": "TTFT p50 (ms)", "p99_ttft_ms": "TTFT p99 (ms)", "median_tpot_ms": "TPOT p50 (ms)",
             "median_itl_ms": "ITL p50 (ms)", "median_e2el_ms": "E2E latency p50 (ms)"},
    "embeddings": {"input_throughput": "inputs/s", "request_throughput": "requests/s",
                   "median_e2el_ms": "latency p50 (ms)", "p99_e2el_ms": "latency p99 (ms)"},
    "images": {"image_throughput": "images/s", "median_e2el_ms": "latency p50 (ms)", "p99_e2el_ms": "latency p99 (ms)"},
    "speech": {"rtfx": "audio seconds per second", "median_ttfb_ms": "TTFB p50 (ms)",
               "median_e2el_ms": "latency p50 (ms)", "p99_e2el_ms": "latency p99 (ms)"},
}
SWEEP_METRICS["completions"] = SWEEP_METRICS["chat"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(curves: dict[str, list[float]], title: str, path: str, xlabel: str = "latency (ms)") -> str:
    """One step curve per label: the fraction of requests at or under each latency (values in seconds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for label, values in curves.items():
        ms = sorted(v * 1000.0 for v in values)
        if ms:
            ax.step(ms, [(i + 1) / len(ms) for i in range(len(ms))], where="post", label=label)
    ax.set(xlabel=xlabel, ylabel="fraction of requests", title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def sweep_plot(series: dict[str, list[tuple[float, float]]], ylabel: str, title: str, path: str,
               xlabel: str = "concurrency", references: dict[str, float] | None = None) -> str:
    """One line per target: (x, y) points, x on a log2 axis when it spans powers of two; `references` are
    dashed horizontal lines (e.g. an in-process baseline)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    xs_all = sorted({x for points in series.values() for x, _ in points})
    for label, points in series.items():
        points = sorted(points)
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    for n, (label, y) in enumerate((references or {}).items()):
        ax.axhline(y, linestyle="--", linewidth=1, color=f"C{len(series) + n}", label=label)
    if xs_all and xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 4:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _save(fig, plt, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _series_name(run: dict) -> str:
    """The target plus the scenario without its concurrency ("c=16 x32" -> "default x32"): one line each."""
    rest = " ".join(w for w in run["scenario"].split() if not w.startswith("c="))
    return f"{run['target']} {rest}".strip()


def sweep_plots(runs: list[dict], out_dir: str, prefix: str) -> list[str]:
    """For runs that differ by concurrency: one PNG per metric, a line per target and workload (the median of
    repeated runs at each point)."""
    paths = []
    modality = runs[0]["modality"]
    for key, label in SWEEP_METRICS[modality].items():
        points: dict[str, dict[float, list]] = defaultdict(lambda: defaultdict(list))
        for r in runs:
            if r["metrics"].get(key) is not None and r["params"].get("concurrency"):
                points[_series_name(r)][r["params"]["concurrency"]].append(r["metrics"][key])
        series = {name: [(x, statistics.median(ys)) for x, ys in by_x.items()] for name, by_x in points.items()}
        if series:
            path = os.path.join(out_dir, f"{prefix}-sweep-{key}.png")
            paths.append(sweep_plot(series, label, f"{modality}: {label}", path))
    return paths


def cdf_plots(runs: list[dict], records: dict[int, list], out_dir: str, prefix: str) -> list[str]:
    """E2E latency CDF per target and scenario (repetitions pooled), and TTFT for streams; `records` maps a run's
    index to its RequestRecords."""
    e2e: dict[str, list] = defaultdict(list)
    ttft: dict[str, list] = defaultdict(list)
    for i, r in enumerate(runs):
        label = f"{r['target']} {r['scenario']}"
        e2e[label] += [x.latency for x in records[i] if x.success]
        ttft[label] += [x.ttft for x in records[i] if x.success and x.ttft is not None]
    modality = runs[0]["modality"]
    paths = [latency_cdf(e2e, f"{modality}: end-to-end latency", os.path.join(out_dir, f"{prefix}-cdf-e2el.png"))]
    if any(ttft.values()):
        path = os.path.join(out_dir, f"{prefix}-cdf-ttft.png")
        paths.append(latency_cdf(ttft, f"{modality}: time to first token", path, xlabel="TTFT (ms)"))
    return paths
