"""The embedding backend contract."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class EmbeddingOutput:
    vectors: np.ndarray  # [N, D] float32, normalised when the model's config says so
    num_tokens: list[int]  # tokens actually embedded per input (after truncation)


class EmbeddingBackend(Protocol):
    dimensions: int
    max_input_tokens: int  # longer inputs are truncated, as sentence-transformers does

    def embed(self, inputs: list[str] | list[list[int]]) -> EmbeddingOutput:
        """Embed a batch of texts or of token-id lists. Raises ModelInputError on empty input."""
