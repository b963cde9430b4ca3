"""The narrow interface the HTTP layer uses to reach a model, whatever hosts it (a Ray handle or in-process).

Everything here is a plain dataclass so it pickles across Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

import numpy as np

from models.images.types import ImageParams
from models.llm.types import SamplingParams, TokenLogprob
from models.speech.types import SpeechParams


@dataclass
class GenerationRequest:
    """One chat or completion call. Exactly one of `messages` (chat) and `prompt` (completion) is set."""

    request_id: str
    params: SamplingParams
    messages: list[dict] | None = None  # [{"role": ..., "content": str}], content already flattened to text
    prompt: str | list[int] | None = None  # text, or token ids
    n: int = 1  # choices; choice i uses seed + i when a seed is given


@dataclass
class GenerationChunk:
    """A delta for one choice. The last chunk of a choice has finish_reason set."""

    index: int  # choice index, 0..n-1
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int  # cumulative for this choice


@dataclass
class EmbeddingResult:
    vectors: np.ndarray  # [N, D] float32
    prompt_tokens: int


@dataclass
class EncodedAudio:
    data: bytes
    media_type: str


@dataclass
class ModelCard:
    """What /v1/models says of a model."""

    id: str
    task: str  # "chat" | "embedding" | "image" | "speech"
    created: int
    owned_by: str = "local"
    metadata: dict = field(default_factory=dict)
    state: str = "ready"  # ready | updating | starting (from zero replicas) | scaled_to_zero


class ChatClient(Protocol):
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream chunks for all n choices, interleaved. Raises ServingError subclasses on bad input."""


class EmbeddingClient(Protocol):
    async def embed(self, inputs: list[str] | list[list[int]]) -> EmbeddingResult: ...


class ImageClient(Protocol):
    async def generate(self, prompt: str, params: ImageParams, n: int) -> list[bytes]:
        """n PNG images; image i uses seed + i when a seed is given."""


class SpeechClient(Protocol):
    async def synthesize(self, text: str, params: SpeechParams, response_format: str) -> EncodedAudio: ...
