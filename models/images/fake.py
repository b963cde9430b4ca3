"""A deterministic ImageBackend for tests: no weights, exact sizes, colours derived from prompt and seed."""
from __future__ import annotations

import hashlib
import time

import numpy as np
from PIL import Image

from models.images.limits import check_request, with_defaults
from models.images.types import ImageParams


class FakeImageBackend:
    """Image i is a horizontal gradient from colour(prompt, seed) on the left to its RGB inverse on the right.

    colour = the first 3 bytes of sha256(f"{prompt}|{seed}".encode()) (seed None -> "None"); pixel (x, y) =
    round(c + (255 - 2c) * x / (width - 1)) per channel c, so column 0 is exactly `colour` and the last column
    exactly 255 - colour. Validation matches the real backend's (check_request).
    """

    def __init__(
        self,
        default_size: tuple[int, int] = (64, 64),
        default_steps: int = 2,
        default_guidance_scale: float = 7.5,
        size_multiple: int = 8,
        max_pixels: int = 1024 * 1024,
        max_steps: int = 150,
        delay_s: float = 0.0,
    ):
        self.default_size = default_size
        self.default_steps = default_steps
        self.default_guidance_scale = default_guidance_scale
        self.size_multiple = size_multiple
        self.max_pixels = max_pixels
        self.max_steps = max_steps
        self.delay_s = delay_s  # each call sleeps this long, so tests can act while requests are in flight
        self.calls: list[int] = []  # batch size of each generate() call, for tests of batching upstream

    def generate(self, prompts: list[str], params: list[ImageParams]) -> list[Image.Image]:
        """One RGB image of exactly params[i]'s size per prompt, in order; bad requests raise ModelInputError."""
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} params")
        params = [with_defaults(p, self.default_steps, self.default_guidance_scale) for p in params]
        for prompt, p in zip(prompts, params):
            check_request(prompt, p, self.size_multiple, self.max_pixels, self.max_steps)
        self.calls.append(len(prompts))
        time.sleep(self.delay_s)
        return [_gradient(fake_colour(prompt, p.seed), p.width, p.height) for prompt, p in zip(prompts, params)]


def fake_colour(prompt: str, seed: int | None) -> tuple[int, int, int]:
    """The left-edge RGB colour of the fake image for (prompt, seed)."""
    digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    return digest[0], digest[1], digest[2]


def _gradient(colour: tuple[int, int, int], width: int, height: int) -> Image.Image:
    c = np.array(colour, dtype=np.float64)  # [3]
    t = np.linspace(0.0, 1.0, width)[:, None]  # [W, 1]
    row = np.rint(c + (255.0 - 2.0 * c) * t).astype(np.uint8)  # [W, 3]
    return Image.fromarray(np.broadcast_to(row, (height, width, 3)).copy())
