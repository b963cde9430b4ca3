"""Incremental detokenization: stream text token by token, correct across multi-byte characters and merges.

Decoding tokens one at a time is wrong in two ways: a byte-level BPE may split "é" or an emoji across tokens (each
half decodes to U+FFFD), and some tokenizers (SentencePiece) decode a token differently depending on its left
neighbour (leading spaces). So, like vLLM and HF's TextStreamer, we decode a small window:
`prefix_offset..read_offset` is text already released, `prefix_offset..end` is the same plus the new tokens; the
delta is the difference, released only once it no longer ends in an incomplete character (U+FFFD). The prefix
text is kept while a character is held back, and a fast tokenizer decodes in its Rust backend directly
(`window_decoder`), since transformers' `decode` wrapper costs several times the decode of a few ids.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

REPLACEMENT_CHAR = "\ufffd"
PROMPT_CONTEXT_TOKENS = 5  # prompt tokens kept as left context for the first output tokens (as vLLM does)


class IncrementalDetokenizer:
    """Feed output token ids one by one; get the text delta each one completes (possibly "")."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._decode_ids = window_decoder(tokenizer, skip_special_tokens)
        self._ids = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])  # window: context + output ids
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = len(self._ids)  # ids before this are already released as text
        self._prefix_text: str | None = None  # the decode of ids[prefix_offset:read_offset], while it stands

    def add(self, token_id: int) -> str:
        """Append one token; return newly complete text (held back while a character is still incomplete)."""
        ids, start = self._ids, self._prefix_offset
        ids.append(token_id)
        prefix_text = self._prefix_text
        if prefix_text is None:
            prefix_text = self._prefix_text = self._decode_ids(ids[start : self._read_offset])
        full_text = self._decode_ids(ids[start:])
        if full_text == prefix_text:  # e.g. a skipped special token: nothing to hold back for
            self._read_offset = len(self._ids)  # the window's text is unchanged: prefix_text still stands
            return ""
        if len(full_text) <= len(prefix_text) or full_text.endswith(REPLACEMENT_CHAR):
            return ""  # the last character is not complete yet
        delta = full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._prefix_text = None
        self._trim()
        return delta

    def flush(self) -> str:
        """The sequence ended: release whatever is held back (an incomplete character decodes as U+FFFD)."""
        prefix_text = self._decode_ids(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode_ids(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        self._prefix_text = None
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""

    def _trim(self) -> None:
        """Drop ids left of the window, so memory and decode cost stay constant over long outputs."""
        if self._prefix_offset > 0:
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0


def window_decoder(tokenizer: Any, skip_special_tokens: bool) -> Callable[[list[int]], str]:
    """`ids -> tokenizer.decode(ids, skip_special_tokens, clean_up_tokenization_spaces=False)`, the same text by
    the shortest way: the Rust backend's decode for a fast tokenizer whose class overrides neither `decode` nor
    `_decode` (transformers' `_decode` is then exactly that call plus the clean-up we turn off)."""
    if decodes_in_backend(tokenizer):
        return functools.partial(tokenizer.backend_tokenizer.decode, skip_special_tokens=skip_special_tokens)
    # No clean-up of spaces before punctuation: it would make a window's decode disagree with the full text.
    return functools.partial(tokenizer.decode, skip_special_tokens=skip_special_tokens,
                             clean_up_tokenization_spaces=False)


def decodes_in_backend(tokenizer: Any) -> bool:
    """True for a fast tokenizer whose decode is its Rust backend's (see window_decoder)."""
    if not hasattr(tokenizer, "backend_tokenizer"):  # not a fast tokenizer: no import of transformers for it
        return False
    try:
        from transformers import PreTrainedTokenizerFast
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    except ImportError:
        return False
    cls = type(tokenizer)
    return (isinstance(tokenizer, PreTrainedTokenizerFast) and cls.decode is PreTrainedTokenizerBase.decode
            and cls._decode is PreTrainedTokenizerFast._decode)
