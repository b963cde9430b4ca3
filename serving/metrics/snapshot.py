"""Metric samples as plain tuples (they cross Ray), their exact sum over processes, and the Prometheus text format.

A Family is (name, type, help, samples) with samples ((sample name, sorted label pairs), value). Counters and
histograms of several processes add up sample by sample (same buckets: one definitions module); gauges add up too
(running sequences of a model = the sum over its replicas).
"""
from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

SampleKey = tuple[str, tuple[tuple[str, str], ...]]
Family = tuple[str, str, str, tuple[tuple[SampleKey, float], ...]]


def snapshot(registry: CollectorRegistry) -> list[Family]:
    """This process' families now. `_created` samples are dropped: a sum of creation times means nothing."""
    families = []
    for metric in registry.collect():
        samples = tuple(((s.name, tuple(sorted(s.labels.items()))), float(s.value))
                        for s in metric.samples if not s.name.endswith("_created"))
        if samples:
            families.append((metric.name, metric.type, metric.documentation, samples))
    return families


def merge(snapshots: Iterable[list[Family]]) -> list[Family]:
    """The sample-by-sample sum of several processes' families, in first-seen order."""
    heads: dict[str, tuple[str, str]] = {}
    sums: dict[str, dict[SampleKey, float]] = {}
    for families in snapshots:
        for name, type_, doc, samples in families:
            heads.setdefault(name, (type_, doc))
            total = sums.setdefault(name, {})
            for key, value in samples:
                total[key] = total.get(key, 0.0) + value
    return [(name, *heads[name], tuple(sums[name].items())) for name in heads]


def only_cumulative(families: list[Family]) -> list[Family]:
    """Counters and histograms only: what still counts once its process has gone quiet."""
    return [f for f in families if f[1] in ("counter", "histogram")]


class _Families:
    """A prometheus_client collector over merged families (its exposition code does the escaping and layout)."""

    def __init__(self, families: list[Family]):
        self.families = families

    def collect(self):
        for name, type_, doc, samples in self.families:
            metric = Metric(name, doc, type_)
            for (sample_name, labels), value in sorted(samples, key=_bucket_order):
                metric.add_sample(sample_name, dict(labels), value)
            yield metric


def _bucket_order(sample: tuple[SampleKey, float]) -> tuple:
    """Series together, and a histogram's buckets by their bound (Prometheus requires ascending `le`)."""
    (name, labels), _ = sample
    rest = tuple(pair for pair in labels if pair[0] != "le")
    le = dict(labels).get("le")
    bound = float("inf") if le == "+Inf" else float(le) if le is not None else 0.0
    return rest, name, bound


def render(families: list[Family]) -> bytes:
    """The Prometheus text exposition format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
