"""One request's token stream (prompt, then output: its one owner), streamed text, and the finish rules. Shared by
every engine.

Finish rules, checked after each new token, first match wins:
1. the token is an eos id (unless params.ignore_eos) or in params.stop_token_ids → "stop"; the token is counted
   but its text is not emitted (as vLLM does);
2. the text now contains a stop string → "stop"; the text is cut before it;
3. the output reached its budget (max_tokens, or the context when max_tokens is None), or its constraint closed it
   early to fit that budget (`last`) → "length".
On finish, text held back (an incomplete character, a possible stop-string start) is released.
"""
from __future__ import annotations

from typing import Any, Iterable

from models.llm.detokenizer import IncrementalDetokenizer
from models.llm.stop import StopStringMatcher
from models.llm.types import RequestOutput, SamplingParams, TokenLogprob


class Sequence:
    """Turn each new token of one request into a RequestOutput delta, deciding when the request finishes.

    `token_ids` holds the prompt then the output so far; engines read it, only `append` writes it.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        tokenizer: Any,
        eos_token_ids: Iterable[int],
        max_new_tokens: int,
    ):
        self.request_id = request_id
        self.token_ids = [int(t) for t in prompt_token_ids]
        self.num_prompt_tokens = len(self.token_ids)
        self.params = params
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.finish_reason: str | None = None
        self._stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        self._detok = IncrementalDetokenizer(tokenizer, self.token_ids)
        self._stop = StopStringMatcher(params.stop)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    def append(self, token_id: int, logprob: TokenLogprob | None = None, last: bool = False) -> RequestOutput:
        """Record one generated token and return what the client gets for it. `last`: the budget ends the output
        with this token (finish rule 3)."""
        if self.finish_reason is not None:
            raise RuntimeError(f"request {self.request_id!r} is already finished")
        token_ids = self.token_ids
        token_ids.append(token_id)
        num_output = len(token_ids) - self.num_prompt_tokens
        if token_id in self._stop_ids:
            self.finish_reason = "stop"
            text = self._release_held()
        else:
            text, hit = self._stop.feed(self._detok.add(token_id))
            if hit:
                self.finish_reason = "stop"
            elif num_output >= self.max_new_tokens or last:
                self.finish_reason = "length"
                text += self._release_held()
        # Positional: this runs for every token of every request (RequestOutput's field order).
        return RequestOutput(self.request_id, [token_id], text,
                             [logprob] if logprob is not None and self.params.logprobs else None,
                             self.finish_reason is not None, self.finish_reason, self.num_prompt_tokens, num_output)

    def _release_held(self) -> str:
        """Text held back by the detokenizer and the stop matcher; a stop string found here still cuts."""
        text, hit = self._stop.feed(self._detok.flush())
        if hit:
            self.finish_reason = "stop"
            return text
        return text + self._stop.flush()
