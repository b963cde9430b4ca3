"""Every metric the server exports, in this process' registry. Names and meanings follow vLLM's where one exists
(`vllm:X` -> `openserve:X`; the mapping is in docs/metrics.md). Labels are bounded: served model names, a fixed
set of endpoints, HTTP status codes, finish reasons. Never a request id, a key or a key id."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds. HTTP latency starts at a few ms (a small embedding); vLLM's token buckets for the LLM figures.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# --- the ingress: every HTTP request ----------------------------------------------------------------------------
REQUESTS = Counter("openserve:requests", "HTTP requests answered, by model, endpoint and status code",
                   ["model", "endpoint", "status"], registry=REGISTRY)
E2E_LATENCY = Histogram("openserve:e2e_request_latency_seconds",
                        "Time from the request's arrival to its last byte (streams included)",
                        ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
IMAGES = Counter("openserve:images_generated", "Images generated", ["model"], registry=REGISTRY)
SPEECH_CHARACTERS = Counter("openserve:speech_input_characters", "Characters of text synthesized to speech",
                            ["model"], registry=REGISTRY)

# --- tokens: LLM replicas count prompt and generated tokens, the ingress counts embedding input tokens ----------
PROMPT_TOKENS = Counter("openserve:prompt_tokens", "Prompt tokens processed (LLM prompts, embedding inputs)",
                        ["model"], registry=REGISTRY)
GENERATION_TOKENS = Counter("openserve:generation_tokens", "Tokens generated", ["model"], registry=REGISTRY)

# --- LLM replicas -------------------------------------------------------------------------------------------------
TTFT = Histogram("openserve:time_to_first_token_seconds",
                 "Time from the request's arrival at its model replica to its first token",
                 ["model"], buckets=TTFT_BUCKETS, registry=REGISTRY)
TPOT = Histogram("openserve:request_time_per_output_token_seconds",
                 "Per request: (last token - first token) / (output tokens - 1)",
                 ["model"], buckets=TPOT_BUCKETS, registry=REGISTRY)
REQUEST_SUCCESS = Counter("openserve:request_success", "Generations finished, by reason: stop, length or abort",
                          ["model", "finished_reason"], registry=REGISTRY)
RUNNING = Gauge("openserve:num_requests_running", "Sequences the engine is decoding", ["model"], registry=REGISTRY)
WAITING = Gauge("openserve:num_requests_waiting", "Sequences waiting for a KV slot", ["model"], registry=REGISTRY)
KV_USAGE = Gauge("openserve:kv_cache_usage_perc", "Fraction of the KV cache in use (0-1)", ["model"],
                 registry=REGISTRY)

# --- batched replicas (embeddings, images, speech) ---------------------------------------------------------------
BATCH_SIZE = Histogram("openserve:batch_size", "Requests per forward pass", ["model"], buckets=BATCH_BUCKETS,
                       registry=REGISTRY)
BATCH_QUEUE = Gauge("openserve:batch_queue_depth", "Requests waiting for the next forward pass", ["model"],
                    registry=REGISTRY)


# --- upstream models: the ingress calls their remote servers itself -----------------------------------------------
UPSTREAM_CIRCUIT = Gauge("openserve:upstream_circuit_state",
                         "1 for the state an upstream model's circuit breaker is in (closed, open, half_open)",
                         ["model", "state"], registry=REGISTRY)
UPSTREAM_OPENED = Counter("openserve:upstream_circuit_opened", "Times an upstream model's circuit opened",
                          ["model"], registry=REGISTRY)


class LabelCache:
    """`metric.labels(*values)` memoised: the hot path skips prometheus_client's lock and label checks."""

    def __init__(self, metric):
        self.metric = metric
        self._children: dict[tuple, object] = {}

    def __call__(self, *values: str):
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child
