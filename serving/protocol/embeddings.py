"""/v1/embeddings: request and response models mirroring OpenAI's embeddings API."""
from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from serving.errors import InvalidRequestError
from serving.protocol.common import OpenAIRequest, OpenAIResponse
from serving.protocol.limits import (
    MAX_EMBEDDING_DIMENSIONS,
    MAX_EMBEDDING_INPUTS,
    Name,
    as_list,
    check_total,
    text_or_tokens,
)


class EmbeddingRequest(OpenAIRequest):
    """POST /v1/embeddings body."""

    model: Name
    input: text_or_tokens("input", MAX_EMBEDDING_INPUTS)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=MAX_EMBEDDING_DIMENSIONS)
    user: Name | None = None

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str | list) -> str | list:
        check_total(as_list(value), "input")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """The batch the backend embeds: a single string or token list becomes a batch of one."""
        return as_list(self.input)

    def check_dimensions(self, model_dimensions: int) -> None:
        """Refuse a `dimensions` other than the model's own (no truncation is done here)."""
        if self.dimensions is not None and self.dimensions != model_dimensions:
            raise InvalidRequestError(
                f"This model produces {model_dimensions}-dimensional embeddings; dimensions={self.dimensions} "
                "is not supported.",
                param="dimensions",
            )


class EmbeddingData(OpenAIResponse):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(OpenAIResponse):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage

    @classmethod
    def from_vectors(
        cls, vectors: np.ndarray, model: str, prompt_tokens: int, encoding_format: str
    ) -> EmbeddingResponse:
        """Vectors [N, D] as floats or as base64 little-endian float32 (what the openai client decodes)."""
        rows = np.asarray(vectors, dtype="<f4")
        if encoding_format == "base64":
            encoded = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
        else:
            encoded = [row.tolist() for row in rows]
        return cls(
            data=[EmbeddingData(index=i, embedding=e) for i, e in enumerate(encoded)],
            model=model,
            usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )
