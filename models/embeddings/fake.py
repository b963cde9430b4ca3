"""A deterministic EmbeddingBackend for tests: vectors are a hash of the input, recomputable by anyone."""
from __future__ import annotations

import hashlib
import time

import numpy as np

from models.embeddings.types import EmbeddingOutput
from models.errors import ModelInputError


class FakeEmbeddingBackend:
    """Embeds by hashing; no weights, no torch.

    Tokens are whitespace-separated words for text and the ids themselves for token-id input; inputs longer than
    `max_input_tokens` are truncated to their first tokens. The truncated input is keyed as the words joined by
    one space (text) or the ids as decimal strings joined by one space (ids): "a  b" embeds like "a b", and
    [1, 2] like the text "1 2". vector = unit(v) with v[k] = (byte_k - 127.5) / 127.5, where byte_k is byte
    k of sha256(b"0" + key) || sha256(b"1" + key) || ... (key UTF-8 encoded); see `fake_vector`.
    """

    def __init__(self, dimensions: int = 8, max_input_tokens: int = 512, delay_s: float = 0.0):
        self.dimensions = dimensions
        self.max_input_tokens = max_input_tokens
        self.delay_s = delay_s  # each call sleeps this long, so tests can act while requests are in flight
        self.calls: list[int] = []  # batch size of each embed() call, for tests of batching upstream

    def embed(self, inputs: list[str] | list[list[int]]) -> EmbeddingOutput:
        """[N, D] unit float32 vectors and per-input token counts after truncation; ModelInputError on empty input."""
        if not isinstance(inputs, list) or not inputs:
            raise ModelInputError("input must be a non-empty list", param="input")
        keys, counts = [], []
        for x in inputs:
            if isinstance(x, str):
                tokens = x.split()
            elif isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x):
                tokens = [str(t) for t in x]
            else:
                raise ModelInputError("input must be strings or lists of token ids", param="input")
            if not x:
                raise ModelInputError("input must not contain empty strings or token lists", param="input")
            tokens = tokens[: self.max_input_tokens]
            keys.append(" ".join(tokens))
            counts.append(len(tokens))
        self.calls.append(len(inputs))
        time.sleep(self.delay_s)
        vectors = np.stack([fake_vector(key, self.dimensions) for key in keys])  # [N, D]
        return EmbeddingOutput(vectors=vectors, num_tokens=counts)


def fake_vector(key: str, dimensions: int) -> np.ndarray:
    """The unit float32 [D] vector FakeEmbeddingBackend gives the (truncated, space-joined) input `key`."""
    data = key.encode()
    stream = b"".join(hashlib.sha256(str(i).encode() + data).digest() for i in range((dimensions + 31) // 32))
    v = (np.frombuffer(stream[:dimensions], dtype=np.uint8).astype(np.float64) - 127.5) / 127.5  # [D], never 0
    return (v / np.linalg.norm(v)).astype(np.float32)
