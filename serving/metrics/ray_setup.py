"""The Ray side of the metrics: where each kind of process starts pushing, and the ingress' scraper."""
from __future__ import annotations

from serving.metrics.hub import ensure_hub, find_hub
from serving.metrics.push import start_pushing
from serving.metrics.scrape import Scraper, model_state_families, serve_replicas


def ingress_scraper(store) -> Scraper:
    """Create the hub if needed, push this ingress' numbers too (other ingresses, if any, show them), and answer
    scrapes with the live local numbers + the hub's + the registry's model states."""
    ensure_hub()
    source = start_pushing("ingress")
    return Scraper(source, find_hub, model_state=lambda: model_state_families(store.list(), serve_replicas()))


def model_replica(model: str) -> None:
    """A model replica's numbers go to the hub from now on."""
    start_pushing("model:" + model)
