"""Request checks shared by every image backend, so the fake rejects exactly what the real one does."""
from __future__ import annotations

from dataclasses import replace

from models.errors import ModelInputError
from models.images.types import ImageParams

# What a torch.Generator takes (manual_seed raises outside it): int64 seeds, plus seed + i for a request's n images.
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1


def with_defaults(params: ImageParams, steps: int, guidance_scale: float) -> ImageParams:
    """`params` with the model's own steps and guidance where the request left them unset (None)."""
    given_steps, given_guidance = params.num_inference_steps, params.guidance_scale
    return replace(params, num_inference_steps=steps if given_steps is None else given_steps,
                   guidance_scale=guidance_scale if given_guidance is None else given_guidance)


def check_request(prompt: str, params: ImageParams, size_multiple: int, max_pixels: int, max_steps: int) -> None:
    """Raise ModelInputError (param "prompt", "size", "num_inference_steps", "guidance_scale" or "seed") for a bad
    request."""
    if not prompt or not prompt.strip():
        raise ModelInputError("prompt must be a non-empty string", param="prompt")
    w, h = params.width, params.height
    if w <= 0 or h <= 0 or w % size_multiple or h % size_multiple:
        raise ModelInputError(
            f"size {w}x{h} is invalid: width and height must be positive multiples of {size_multiple}", param="size"
        )
    if w * h > max_pixels:
        raise ModelInputError(f"size {w}x{h} exceeds this model's limit of {max_pixels} pixels", param="size")
    if not 1 <= params.num_inference_steps <= max_steps:
        raise ModelInputError(f"num_inference_steps must be in 1..{max_steps}", param="num_inference_steps")
    if params.guidance_scale < 0:
        raise ModelInputError("guidance_scale must be >= 0", param="guidance_scale")
    if params.seed is not None and not MIN_SEED <= params.seed <= MAX_SEED:
        raise ModelInputError(f"seed must be an integer in {MIN_SEED}..{MAX_SEED}", param="seed")
