"""Engine-side state of one request: how much of its token stream the KV cache holds, its slot, seed and mask."""
from __future__ import annotations

import secrets
from typing import Any

from models.llm.constraints import TokenMask
from models.llm.sampler import SampledToken
from models.llm.sequence import Sequence
from models.llm.types import RequestOutput, SamplingParams, TokenLogprob


class EngineRequest:
    """Tokens [0, num_computed) of `seq.token_ids` are in the KV cache; [num_computed, len) still have to be fed.

    After admission the pending tokens are the prompt (prefilled in one or more chunks); after that, exactly one:
    the last sampled token, fed at the next decode step. The tokens themselves belong to the Sequence.
    """

    def __init__(self, seq: Sequence, constraint: TokenMask | None = None):
        self.seq = seq
        self.constraint = constraint
        seed = seq.params.seed
        self.seed = seed % 2**64 if seed is not None else secrets.randbits(64)  # a negative seed: its 64 bits
        self.num_computed = 0
        self.num_exact = 0  # leading tokens computed as a fresh prefill computes them (prefix_cache.py publishes them)
        self.slot: int | None = None
        self.prefix_keys: list[bytes] = []  # chained keys of its full blocks the prefix cache knows (prefix_cache.py)
        self.runner_state: Any = None  # what a runner keeps per request (the fallback's KV cache); dies with it

    @property
    def request_id(self) -> str:
        return self.seq.request_id

    @property
    def params(self) -> SamplingParams:
        return self.seq.params

    @property
    def token_ids(self) -> list[int]:
        return self.seq.token_ids

    @property
    def num_pending(self) -> int:
        return len(self.seq.token_ids) - self.num_computed

    @property
    def is_decoding(self) -> bool:
        """The prompt is in the cache; one sampled token waits to be fed."""
        return self.num_computed >= self.seq.num_prompt_tokens

    def pending_tokens(self, count: int) -> list[int]:
        return self.seq.token_ids[self.num_computed : self.num_computed + count]

    def append(self, sampled: SampledToken) -> RequestOutput:
        """Record the token sampled for this request (its mask advances) and return the client's delta."""
        closed = self.constraint is not None and bool(self.constraint.accept_token(sampled.token_id))
        logprob = self._logprob(sampled) if sampled.logprob is not None else None
        return self.seq.append(sampled.token_id, logprob, last=closed)

    def _logprob(self, sampled: SampledToken) -> TokenLogprob:
        decode = self.seq.tokenizer.decode
        top = [(t, decode([t]), lp) for t, lp in sampled.top]
        return TokenLogprob(sampled.token_id, decode([sampled.token_id]), sampled.logprob, top)
