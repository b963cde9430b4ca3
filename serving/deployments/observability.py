"""The Ray side of metrics and request ids: where each kind of process starts pushing its metrics, the ingress'
scraper, and the request id handed on to the model replicas' Serve log lines."""
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


def group_replica(group: str) -> None:
    """A colocation group's replica: its members' numbers go to the hub from now on, as one process' source."""
    start_pushing("group:" + group)


def tag_serve_request(request_id: str) -> None:
    """Make `request_id` the id of the handle calls this request makes, so that the model replica's own log lines
    (Serve's replica logger) carry the same id as the ingress' (what Serve's HTTP proxy does with X-Request-Id; a
    private Serve context, hence the guard: without it the calls just get ids of their own)."""
    try:
        from ray.serve.context import _RequestContext, _serve_request_context
    except ImportError:
        return
    _serve_request_context.set(_RequestContext(request_id=request_id))
