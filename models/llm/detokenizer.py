"""Incremental detokenization: stream text token by token, correct across multi-byte characters and merges.

Decoding tokens one at a time is wrong in two ways: a byte-level BPE may split "é" or an emoji across tokens (each
half decodes to U+FFFD), and some tokenizers (SentencePiece) decode a token differently depending on its left
neighbour (leading spaces). So, like vLLM and HF's TextStreamer, we decode a small window:
`prefix_offset..read_offset` is text already released, `prefix_offset..end` is the same plus the new tokens; the
delta is the difference, released only once it no longer ends in an incomplete character (U+FFFD).
"""
from __future__ import annotations

from typing import Any

REPLACEMENT_CHAR = "\ufffd"
PROMPT_CONTEXT_TOKENS = 5  # prompt tokens kept as left context for the first output tokens (as vLLM does)


class IncrementalDetokenizer:
    """Feed output token ids one by one; get the text delta each one completes (possibly "")."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])  # window: context + output ids
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = len(self._ids)  # ids before this are already released as text

    def add(self, token_id: int) -> str:
        """Append one token; return newly complete text (held back while a character is still incomplete)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if full_text == prefix_text:  # e.g. a skipped special token: nothing to hold back for
            self._read_offset = len(self._ids)
            return ""
        if len(full_text) <= len(prefix_text) or full_text.endswith(REPLACEMENT_CHAR):
            return ""  # the last character is not complete yet
        delta = full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._trim()
        return delta

    def flush(self) -> str:
        """The sequence ended: release whatever is held back (an incomplete character decodes as U+FFFD)."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        # No clean-up of spaces before punctuation: it would make a window's decode disagree with the full text.
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def _trim(self) -> None:
        """Drop ids left of the window, so memory and decode cost stay constant over long outputs."""
        if self._prefix_offset > 0:
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
