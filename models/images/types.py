"""The text-to-image backend contract."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class ImageParams:
    width: int
    height: int
    num_inference_steps: int | None  # None: the model's own default (its options', else its pipeline's)
    guidance_scale: float | None  # None: likewise
    seed: int | None = None
    negative_prompt: str | None = None


class ImageBackend(Protocol):
    default_size: tuple[int, int]  # (width, height)
    default_steps: int
    default_guidance_scale: float
    size_multiple: int  # width and height must be multiples of this (8 for SD's VAE)
    max_pixels: int  # width * height limit

    def generate(self, prompts: list[str], params: list[ImageParams]) -> list[Image.Image]:
        """One image per (prompt, params) pair, in order; pairs with equal sizes/steps run as one batch."""
