"""Grammar-constrained decoding with llguidance: grammars, their compile cache, and the TokenMask they plug in as.

A `Grammar` (a JSON schema, "any JSON object", or a Lark grammar) is plain data: it crosses the engine process's
pipe and keys the cache. `GrammarCompiler` holds, per model, llguidance's view of the tokenizer (built once, on
first use) and the compiled grammars (an LRU by grammar); each request gets a copy of the compiled matcher, wrapped
in a `GrammarMask` that the batched sampler asks for its row of the allowed-token bitmask (constraints.py).

A json_object request also gets a `BudgetCloser` (json_close.py): near the end of its token budget its mask narrows
so that the object closes in time instead of being cut unterminated.

Whitespace is not flexible (`whitespace_flexible: False`): JSON allows unbounded whitespace between tokens, and a
weak model can emit it forever inside valid JSON. When the grammar accepts, only eos is allowed, so the request
ends there.
"""
from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import llguidance
import llguidance.numpy

from models.errors import ModelInputError
from models.llm.json_close import BudgetCloser, ClosingPlan

if TYPE_CHECKING:  # the serving side imports Grammar; it need not import torch for that
    import torch

GrammarKind = Literal["json_schema", "json_object", "lark"]
_OVERRIDES = {"whitespace_flexible": False}
_ANY_OBJECT = {"type": "object"}


@dataclass(frozen=True)
class Grammar:
    """What a constrained request's output must match. `source`: the schema as JSON text (json_schema), the Lark
    text (lark), or "" (json_object: any JSON object)."""

    kind: GrammarKind
    source: str = ""

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> "Grammar":
        # Keys keep their order: llguidance emits properties in the schema's order (a tool call's name first).
        return cls("json_schema", json.dumps(schema, separators=(",", ":")))

    def to_llguidance(self) -> str:
        """The grammar in llguidance's own (JSON) form."""
        if self.kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(self.source)
        schema = _ANY_OBJECT if self.kind == "json_object" else json.loads(self.source)
        return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_OVERRIDES)


def check_grammar(grammar: Grammar, param: str) -> None:
    """ModelInputError (naming `param`) when llguidance cannot compile the grammar; no tokenizer is needed."""
    try:
        source = grammar.to_llguidance()
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(source)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ModelInputError(f"Invalid {param}: {e}", param=param) from None
    if is_error:
        raise ModelInputError(f"Invalid {param}: {'; '.join(messages) or 'the grammar does not compile'}",
                              param=param)


class GrammarMask:
    """TokenMask over one llguidance matcher (one request's progress through its grammar), with an optional budget
    watch that closes JSON in time."""

    def __init__(self, matcher: llguidance.LLMatcher, closer: BudgetCloser | None = None):
        self.matcher = matcher
        self.closer = closer

    def fill_bitmask(self, bitmask: "torch.Tensor", row: int) -> None:
        rows = bitmask.numpy()
        llguidance.numpy.fill_next_token_bitmask(self.matcher, rows, row)
        if self.closer is not None:
            self.closer.narrow(self.matcher, rows[row])

    def accept_token(self, token_id: int) -> bool:
        # A token the mask forbade (only a row with nothing allowed gets one) leaves the matcher in error: its next
        # mask then allows only eos, which ends the request instead of emitting text outside the grammar.
        self.matcher.consume_token(token_id)
        return self.closer is not None and self.closer.accepted(self.matcher, token_id)


class GrammarCompiler:
    """Per model: llguidance's tokenizer view and an LRU of compiled grammars. Thread-safe; meant to run off the
    engine thread (compiling a large schema takes milliseconds to seconds)."""

    def __init__(self, tokenizer: Any, vocab_size: int, cache_size: int = 128):
        # A copy: a fast tokenizer used from two threads at once raises "Already borrowed".
        self._hf_tokenizer = copy.deepcopy(tokenizer)
        self._vocab_size = vocab_size  # the model's: its logits (and the sampler's bitmask) may outnumber the tokens
        self._view: llguidance.LLTokenizer | None = None
        self._closing: ClosingPlan | None = None  # built at the first json_object
        self._cache: OrderedDict[Grammar, llguidance.LLMatcher] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def tokenizer_view(self) -> llguidance.LLTokenizer:
        """llguidance's view of the tokenizer, built on first use (ModelInputError if it cannot be)."""
        if self._view is None:
            import llguidance.hf  # imports transformers: only where a model runs, not in the HTTP process
            try:
                self._view = llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self._vocab_size)
            except Exception as e:  # noqa: BLE001 - any tokenizer llguidance cannot read
                raise ModelInputError(f"This model's tokenizer cannot be used for constrained output: {e}",
                                      param="response_format") from None
        return self._view

    def compile(self, grammar: Grammar, param: str = "response_format", budget: int | None = None) -> GrammarMask:
        """A fresh mask for one request (ModelInputError naming `param` when the grammar is invalid). `budget`: the
        tokens the request may sample; a json_object then closes within it (json_close.py)."""
        with self._lock:
            view = self.tokenizer_view()
            prototype = self._cache.get(grammar)
            if prototype is None:
                check_grammar(grammar, param)
                prototype = llguidance.LLMatcher(view, grammar.to_llguidance(), log_level=0)
                if prototype.is_error():
                    raise ModelInputError(f"Invalid {param}: {prototype.get_error()}", param=param)
                self._cache[grammar] = prototype
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(grammar)
            return GrammarMask(prototype.deep_copy(), self._closer(grammar, budget))

    def _closer(self, grammar: Grammar, budget: int | None) -> BudgetCloser | None:
        if grammar.kind != "json_object" or budget is None:
            return None
        if self._closing is None:
            self._closing = ClosingPlan(self.tokenizer_view(), self._vocab_size)
        return BudgetCloser(self._closing, budget) if self._closing.usable else None
