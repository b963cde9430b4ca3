"""/v1/embeddings: request and response models mirroring OpenAI's embeddings API."""
from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator

from serving.errors import InvalidRequestError
from serving.protocol.common import OpenAIRequest, OpenAIResponse, one_message

MAX_INPUTS = 2048  # as OpenAI

EmbeddingInput = Annotated[
    str | list[str] | list[int] | list[list[int]],
    one_message("input must be a string, a list of strings, a list of token ids or a list of token-id lists"),
]


class EmbeddingRequest(OpenAIRequest):
    """POST /v1/embeddings body."""

    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: str | list) -> str | list:
        if not value:
            raise ValueError("input must not be empty")
        if isinstance(value, list) and not isinstance(value[0], int):
            if len(value) > MAX_INPUTS:
                raise ValueError(f"at most {MAX_INPUTS} inputs are allowed per request")
            if any(not item for item in value):
                raise ValueError("input must not contain empty strings or empty token lists")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """The batch the backend embeds: a single string or token list becomes a batch of one."""
        if isinstance(self.input, str) or isinstance(self.input[0], int):
            return [self.input]  # type: ignore[list-item]
        return list(self.input)  # type: ignore[arg-type]

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
