"""/v1/images/generations: request and response models mirroring OpenAI's image API, plus diffusion extensions."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import AliasChoices, Field

from models.images.types import ImageParams
from serving.errors import InvalidRequestError
from serving.protocol.common import OpenAIRequest, OpenAIResponse
from serving.protocol.limits import (
    MAX_GUIDANCE_SCALE,
    MAX_IMAGE_PROMPT_CHARS,
    MAX_IMAGE_SIDE,
    MAX_IMAGE_STEPS,
    MAX_IMAGES,
    Name,
    Seed,
    text,
)

_SIZE = re.compile(r"([0-9]{1,9})x([0-9]{1,9})")  # ASCII digits only: str.isdigit() also accepts '²'


@dataclass(frozen=True)
class ImageDefaults:
    """What an image model uses when the request says nothing, and its size limits (from its card's metadata)."""

    width: int = 512
    height: int = 512
    steps: int | None = None  # None: the model's own (its pipeline's __call__ default unless options set one)
    guidance_scale: float | None = None
    size_multiple: int = 8  # SD's VAE downsamples by 8
    max_pixels: int = 1024 * 1024

    @classmethod
    def from_metadata(cls, metadata: dict) -> ImageDefaults:
        """Reads `default_size` ([w, h]), `default_steps`, `default_guidance_scale`, `size_multiple`, `max_pixels`."""
        base = cls()
        width, height = metadata.get("default_size", (base.width, base.height))
        return cls(
            width=int(width),
            height=int(height),
            steps=_optional(int, metadata.get("default_steps")),
            guidance_scale=_optional(float, metadata.get("default_guidance_scale")),
            size_multiple=int(metadata.get("size_multiple", base.size_multiple)),
            max_pixels=int(metadata.get("max_pixels", base.max_pixels)),
        )


def _optional(kind, value):
    return None if value is None else kind(value)


class ImageGenerationRequest(OpenAIRequest):
    """POST /v1/images/generations body; seed, num_inference_steps, guidance_scale, negative_prompt extend it."""

    model: Name
    prompt: text(MAX_IMAGE_PROMPT_CHARS, min_chars=1)
    n: int = Field(default=1, ge=1, le=MAX_IMAGES)
    size: Name | None = None  # "WxH" or "auto"
    response_format: Literal["url", "b64_json"] | None = None  # None: b64_json (this server hosts no files)
    output_format: Name | None = None
    stream: bool = False
    user: Name | None = None
    seed: Seed | None = None
    num_inference_steps: int | None = Field(
        default=None, ge=1, le=MAX_IMAGE_STEPS, validation_alias=AliasChoices("num_inference_steps", "steps")
    )
    guidance_scale: float | None = Field(
        default=None, ge=0.0, le=MAX_GUIDANCE_SCALE, validation_alias=AliasChoices("guidance_scale", "guidance")
    )
    negative_prompt: text(MAX_IMAGE_PROMPT_CHARS) | None = None

    def to_image_params(self, defaults: ImageDefaults) -> ImageParams:
        """Backend parameters; image i of n uses seed + i (the client's contract)."""
        self._reject_unsupported()
        width, height = self.parse_size(defaults)
        return ImageParams(
            width=width,
            height=height,
            num_inference_steps=self.num_inference_steps or defaults.steps,
            guidance_scale=defaults.guidance_scale if self.guidance_scale is None else self.guidance_scale,
            seed=self.seed,
            negative_prompt=self.negative_prompt,
        )

    def parse_size(self, defaults: ImageDefaults) -> tuple[int, int]:
        """(width, height) from "WxH"; both multiples of the model's size_multiple, area within its max_pixels."""
        if self.size in (None, "auto"):
            return defaults.width, defaults.height
        match = _SIZE.fullmatch(self.size.lower())
        if match is None:
            raise InvalidRequestError(f"size must look like '1024x1024', got '{self.size}'.", param="size")
        width, height = int(match[1]), int(match[2])
        m = defaults.size_multiple
        if width < m or height < m or width % m or height % m:
            raise InvalidRequestError(
                f"size {self.size} is not supported: width and height must be positive multiples of {m}.", param="size"
            )
        if width * height > defaults.max_pixels or max(width, height) > MAX_IMAGE_SIDE:
            raise InvalidRequestError(
                f"size {self.size} is too large for this model: at most {defaults.max_pixels} pixels "
                f"(default {defaults.width}x{defaults.height}).",
                param="size",
            )
        return width, height

    def _reject_unsupported(self) -> None:
        if self.response_format == "url":
            raise InvalidRequestError(
                "response_format 'url' is not supported: this server does not host files; use 'b64_json'.",
                param="response_format",
            )
        if self.output_format not in (None, "png"):
            raise InvalidRequestError("Only output_format 'png' is supported.", param="output_format")
        if self.stream:
            raise InvalidRequestError("Streaming image generation is not supported.", param="stream")


class ImageData(OpenAIResponse):
    b64_json: str
    revised_prompt: str | None = None


class ImagesResponse(OpenAIResponse):
    created: int
    data: list[ImageData]
    output_format: str = "png"
    size: str | None = None
