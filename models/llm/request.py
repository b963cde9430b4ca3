"""Engine-side state of one request: its token stream, how much of it the KV cache holds, its slot and sampler."""
from __future__ import annotations

from models.llm.sampler import RequestSampler
from models.llm.sequence import Sequence


class EngineRequest:
    """Tokens [0, num_computed) are in the KV cache; [num_computed, len(token_ids)) still have to be fed to the model.

    After admission the pending tokens are the prompt (prefilled in one or more chunks); after that, exactly one:
    the last sampled token, fed at the next decode step.
    """

    def __init__(self, seq: Sequence, sampler: RequestSampler):
        self.seq = seq
        self.sampler = sampler
        self.token_ids: list[int] = list(seq.prompt_token_ids)
        self.num_computed = 0
        self.slot: int | None = None

    @property
    def request_id(self) -> str:
        return self.seq.request_id

    @property
    def num_pending(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def is_decoding(self) -> bool:
        """The prompt is in the cache; one sampled token waits to be fed."""
        return self.num_computed >= len(self.seq.prompt_token_ids)

    def pending_tokens(self, count: int) -> list[int]:
        return self.token_ids[self.num_computed : self.num_computed + count]

    def append_output(self, token_id: int) -> None:
        self.token_ids.append(token_id)
