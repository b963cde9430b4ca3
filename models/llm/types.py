"""The LLM engine contract: plain dataclasses that cross the engine boundary, and the engine protocol."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class SamplingParams:
    """How to sample one sequence. Mirrors the OpenAI fields the engine honours."""

    max_tokens: int | None = 16  # None: until the context is full
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1  # -1: disabled
    seed: int | None = None  # any 64-bit value, -2**63 .. 2**64 - 1; same seed + same prompt -> same output
    stop: list[str] = field(default_factory=list)  # cut before the first occurrence, not included in text
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0  # 0..20 alternatives per position, only when logprobs
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit, -100..100


@dataclass
class TokenLogprob:
    """The sampled token at one position, with its log-probability and the top alternatives."""

    token_id: int
    token: str  # the token's text as the tokenizer decodes it alone
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (token_id, token, logprob), best first


@dataclass
class RequestOutput:
    """What one `step()` produced for one request: a delta, not the whole text so far."""

    request_id: str
    new_token_ids: list[int]
    new_text: str  # text delta; may lag tokens while a stop string or a multi-byte char is still forming
    logprobs: list[TokenLogprob] | None  # one per new token when params.logprobs, else None
    finished: bool
    finish_reason: str | None  # "stop" (eos, stop string, stop token) or "length"; None while running
    num_prompt_tokens: int
    num_output_tokens: int  # cumulative for this request


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of an engine's state and its counters since it started (counters only grow)."""

    running: int  # requests holding a KV slot (prefilling or decoding)
    waiting: int  # requests queued for a slot
    kv_slots_used: int  # KV slots held by running requests
    kv_slots_total: int
    kv_tokens_used: int  # tokens held in the KV cache by running requests
    steps: int  # steps that ran work
    busy_s: float  # time spent inside steps that ran work
    prompt_tokens: int  # prompt tokens fed to the model (prefill)
    generated_tokens: int  # output tokens sampled
    finished_requests: int  # requests that finished (stop or length)
    aborted_requests: int  # requests aborted while unfinished
    batched: bool  # the batched slot-attention runner (False: the per-request fallback)
    cuda_graphs: int  # decode CUDA graphs captured (at load; 0 off CUDA or with graphs off)
    device: str = "cpu"  # the torch device type the model runs on ("cpu", "cuda")
    cuda_graphs_on: bool = False  # decode steps replay CUDA graphs (False off CUDA, with graphs off, or after a
    # capture failure)
    prefix_cache_hit_tokens: int = 0  # prompt tokens whose KV came from the prefix cache (not computed)
    prefix_cache_miss_tokens: int = 0  # prompt tokens computed while the prefix cache was on


class LLMEngine(Protocol):
    """A token-streaming engine. Not thread-safe: one caller thread drives every method."""

    tokenizer: Any  # a Hugging Face tokenizer (encode, decode, apply_chat_template, eos_token_id)
    max_model_len: int  # prompt + output tokens must fit
    vocab_size: int  # token ids are in [0, vocab_size)
    max_running: int  # requests decoded together
    max_queued: int  # requests waiting beyond max_running before add_request raises EngineOverloadedError

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    constraint: Any = None) -> None:
        """Queue a request. Raises ModelInputError if it can never run (bad params, prompt + max_tokens >
        max_model_len, a constraint the engine cannot apply), EngineOverloadedError past max_running +
        max_queued, ValueError for a duplicate id. `constraint`: a constraints.TokenMask, or None."""

    def step(self) -> list[RequestOutput]:
        """Advance every running request by (at most) one token; return the deltas produced."""

    def abort(self, request_id: str) -> None:
        """Drop a request and free its memory; unknown ids are ignored."""

    def has_unfinished_requests(self) -> bool:
        """True while any request is queued or running."""

    def stats(self) -> EngineStats:
        """The engine's state and counters now."""

    def is_alive(self) -> bool:
        """True while the engine can step (an in-process engine until close(); a process proxy while its child
        lives)."""

    def close(self) -> None:
        """Release the engine's resources (requests, KV cache, a child process); idempotent."""
