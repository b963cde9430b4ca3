"""PromptEncoder: a request's prompt as token ids, made on a thread of its own, after a character cap.

Chat templating and tokenizing take time in proportion to the text; on the engine thread one huge message would
stall every stream of the model. Here they run on one dedicated thread with a tokenizer of its own (fast tokenizers
raise "Already borrowed" when one is used from two threads), and a prompt longer than `max_chars` characters is
refused before any of that work.
"""
from __future__ import annotations

import asyncio
import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from serving.clients import GenerationRequest
from serving.errors import InvalidRequestError
from serving.imports import import_on_thread

# Characters per token that a prompt may average. Byte-level BPE vocabularies hold tokens of up to ~80 characters
# (SmolLM2: 81, a run of spaces), so a prompt longer than this times the context can never fit, whatever it holds.
MAX_CHARS_PER_TOKEN = 128


# The library a real model's tokenizer arrives in from the engine process (pickled), and its fast-tokenizer base:
# transformers 5's, then 4's name. ~1 CPU-s to import.
TOKENIZER_MODULES = ("transformers", "transformers.tokenization_utils_tokenizers",
                     "transformers.tokenization_utils_fast")


def import_tokenizer_library() -> threading.Thread:
    """Import the tokenizer's library on a thread while the engine process loads the model: unpickling its tokenizer
    would otherwise import it after the engine is ready, the last serial step of a start (~1 s)."""
    return import_on_thread(*TOKENIZER_MODULES, name="tokenizer-imports")


class PromptEncoder:
    """Turns a GenerationRequest into prompt token ids on its own thread; InvalidRequestError past the cap."""

    def __init__(self, tokenizer: Any, max_chars: int):
        self._tokenizer = copy.deepcopy(tokenizer)  # never the engine's own: that one is used on the engine thread
        self.max_chars = max_chars
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-prompts")

    async def encode(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids (a token-id prompt as given)."""
        if isinstance(request.prompt, list):
            return list(request.prompt)
        self._check_size(request)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._encode, request)

    async def tokenize(self, request: GenerationRequest, special: bool) -> list[int]:
        """Token ids as /tokenize reports them: `special` adds the tokenizer's special tokens to a prompt, or the
        assistant's turn opener to messages (add_generation_prompt)."""
        self._check_size(request)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._encode, request, special)

    async def detokenize(self, token_ids: list[int]) -> str:
        """The text of `token_ids`; InvalidRequestError for an id outside the vocabulary."""
        size = len(self._tokenizer)
        bad = next((t for t in token_ids if not 0 <= t < size), None)
        if bad is not None:
            raise InvalidRequestError(f"Token id {bad} is outside the vocabulary (0..{size - 1}).", param="tokens")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._tokenizer.decode, token_ids)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _check_size(self, request: GenerationRequest) -> None:
        if request.messages is not None:
            size = sum(len(str(m.get("content") or "")) + len(str(m.get("role") or "")) for m in request.messages)
            param = "messages"
        else:
            size, param = len(request.prompt or ""), "prompt"
        if size > self.max_chars:
            raise InvalidRequestError(f"The prompt has {size} characters; this model accepts at most "
                                      f"{self.max_chars}.", param=param)

    def _encode(self, request: GenerationRequest, special: bool | None = None) -> list[int]:
        """special: the generation prompt after messages (default True) / special tokens around a prompt (False)."""
        tok = self._tokenizer
        if request.messages is not None:
            ids = tok.apply_chat_template(request.messages, add_generation_prompt=special is not False,
                                          tokenize=True)
            if hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
                ids = ids["input_ids"]
            return list(ids)
        return list(tok.encode(request.prompt, add_special_tokens=bool(special))) if request.prompt else []
