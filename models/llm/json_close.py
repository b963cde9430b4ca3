"""Closing a json_object output inside its token budget: the tokens a request has left are never fewer than what
closing its open strings, arrays and objects takes.

`max_tokens` used to cut a weak model that nests or repeats inside valid JSON (SmolLM2-135M does, docs/
structured-outputs.md), leaving unterminated JSON. Here the grammar's own matcher (llguidance) is the only parser:

- The closing path of a state is found by playing a fixed policy on a copy of the matcher until it accepts: inside a
  string (the grammar allows `x` there and nowhere else) take `"`; otherwise the first of `}` `]` `"` `0` `:` that the
  grammar allows (end an object or array, open an empty string where a key or value is due, finish a number or a
  value, a key's colon), else the grammar's forced tokens (a literal's tail: `t` -> `rue`), else its lowest allowed
  token id (the rest of a UTF-8 character). Its length is the closing cost c.
- One token can raise c by at most 5 per structural byte (`{ [ , : " \`; a comma in an object needs `"":""}`) plus 4
  (an unfinished literal: `f` -> `alse`). So with r tokens left (this one included) a token may be sampled only if
  c + its bound <= r - 1: the mask drops the tokens that could open too much; when nothing but closing fits, it is
  the policy's next token alone. Tokens that keep a string going or close something are never dropped.
- An output that completes on a step where no new key, item or string fitted any more (and the mask dropped tokens
  the grammar allowed) ends the request as "length": the budget decided its end. One the model completes while it
  could still have gone on is a "stop" as before.

Nothing changes while the budget is far (the cost is recomputed only when it could matter), so a capable model's
output is untouched unless it would otherwise have been cut.
"""
from __future__ import annotations

import llguidance
import llguidance.numpy
import numpy as np

CLOSERS = (b"}", b"]", b'"', b"0", b":")  # the policy's preference outside strings, first allowed wins
IN_STRING = b"x"  # allowed only inside a string: no number, literal or escape has it
STRUCTURAL = frozenset(b'{[,:"\\')
GROWTH_PER_STRUCTURAL_BYTE = 5  # ',' inside an object: '}' becomes '"":""}'
GROWTH_OTHER = 4  # an unfinished literal at the token's end: 'f' needs 'alse'
ONE_STRUCTURAL = GROWTH_PER_STRUCTURAL_BYTE + GROWTH_OTHER  # the bound of a token with one structural byte
MAX_PATH = 512  # a longer closing path is not searched for (no narrowing then)


def token_bound(data: bytes) -> int:
    """Upper bound on how much one token with these bytes can raise a JSON state's closing cost."""
    return GROWTH_PER_STRUCTURAL_BYTE * sum(1 for b in data if b in STRUCTURAL) + GROWTH_OTHER


class ClosingPlan:
    """Per tokenizer: the closer tokens, and for each bound b the bitmask of the tokens whose bound is <= b."""

    def __init__(self, view: llguidance.LLTokenizer, vocab_size: int):
        self.words = (vocab_size + 31) // 32
        single = {view.decode_bytes([t]): t for t in range(view.vocab_size)}
        self.closers = [single[c] for c in CLOSERS if c in single]
        self.in_string, self.quote = single.get(IN_STRING), single.get(b'"')
        # a tokenizer without these single-byte tokens gets no closing (byte-level BPEs all have them)
        self.usable = len(self.closers) == len(CLOSERS) and self.in_string is not None
        self.eos = view.eos_token
        bounds = np.array([token_bound(view.decode_bytes([t])) for t in range(view.vocab_size)], dtype=np.int64)
        self.bounds = bounds.tolist()
        self.max_bound = int(bounds.max())
        self._masks = [_bitmask(np.nonzero(bounds <= b)[0], self.words) for b in range(self.max_bound)]

    def fitting(self, room: int) -> np.ndarray | None:
        """Bitmask of the tokens whose bound is <= room (None: every token fits)."""
        if room >= self.max_bound:
            return None
        return self._masks[room] if room >= 0 else np.zeros(self.words, dtype=np.int32)

    def path(self, matcher: llguidance.LLMatcher) -> list[int] | None:
        """The policy's closing tokens from the matcher's state ([] when it accepts; None: no path found)."""
        m = matcher.deep_copy()
        scratch = np.zeros((1, self.words), dtype=np.int32)
        path: list[int] = []
        while not m.is_accepting():
            if len(path) >= MAX_PATH or m.is_error():
                return None
            scratch[0] = 0
            llguidance.numpy.fill_next_token_bitmask(m, scratch, 0)
            token = self._next(m, scratch[0])
            if token is None:
                return None
            m.consume_token(token)
            path.append(token)
        return path

    def _next(self, m: llguidance.LLMatcher, allowed: np.ndarray) -> int | None:
        if _is_set(allowed, self.in_string):
            return self.quote
        for t in self.closers:
            if _is_set(allowed, t):
                return t
        forced = m.compute_ff_tokens()
        if forced:
            return forced[0]
        ids = np.nonzero(np.unpackbits(allowed.view(np.uint8), bitorder="little"))[0]
        ids = ids[ids != self.eos]
        return int(ids[0]) if len(ids) else None


class BudgetCloser:
    """One request's budget watch: narrows its grammar's bitmask row so that the output closes in time."""

    def __init__(self, plan: ClosingPlan, budget: int):
        self.plan = plan
        self.budget = budget  # tokens the request may sample, eos included
        self.used = 0
        self.forced = False  # the last mask left only closing and content (see the module docstring)
        self.gave_up = False
        self._cost_ceiling: int | None = None  # an upper bound on the closing cost now (None: unknown)

    def narrow(self, matcher: llguidance.LLMatcher, row: np.ndarray) -> None:
        """AND the grammar's allowed row (int32 words, filled) with what still fits the tokens left."""
        self.forced = False
        left = self.budget - self.used - 1  # tokens left after this one
        if self.gave_up or (self._cost_ceiling is not None and left - self._cost_ceiling >= self.plan.max_bound):
            return
        path = self.plan.path(matcher)
        if path is None:  # deeper than MAX_PATH, or a state the policy cannot leave: the budget cuts, as before
            self.gave_up = True
            return
        self._cost_ceiling = len(path)
        room = left - len(path)
        fitting = self.plan.fitting(room) if path else None
        if fitting is None:
            return
        word, bit = path[0] >> 5, np.uint32(1 << (path[0] & 31))
        dropped = (row & ~fitting).view(np.uint32)
        dropped[word] &= ~bit
        # the budget decides the end: no new key, item or string fits, and tokens the grammar allows are dropped
        self.forced = room < ONE_STRUCTURAL and bool(dropped.any())
        row &= fitting
        row.view(np.uint32)[word] |= bit

    def accepted(self, matcher: llguidance.LLMatcher, token_id: int) -> bool:
        """Count the token just consumed; True when it completed an output whose end the budget shaped."""
        self.used += 1
        if self._cost_ceiling is not None:
            bounds = self.plan.bounds
            self._cost_ceiling += bounds[token_id] if token_id < len(bounds) else self.plan.max_bound
        return self.forced and matcher.is_accepting()


def _bitmask(ids: np.ndarray, words: int) -> np.ndarray:
    bits = np.zeros(words * 32, dtype=np.uint8)
    bits[ids] = 1
    return np.packbits(bits, bitorder="little").view(np.int32)


def _is_set(row: np.ndarray, token: int) -> bool:
    return bool((int(row[token >> 5]) >> (token & 31)) & 1)
