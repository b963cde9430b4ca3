"""ImageBackend over any diffusers text-to-image pipeline (local folder or hub id)."""
from __future__ import annotations

import inspect
import secrets
import warnings
from collections import defaultdict

import torch
from PIL import Image

from models.errors import ModelInputError
from models.images.limits import check_request, with_defaults
from models.images.types import ImageParams

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DiffusersImageBackend:
    """Text-to-image with a diffusers pipeline; requests sharing (size, steps, guidance) run as one batch."""

    def __init__(
        self,
        location: str,
        device: str = "cpu",
        dtype: str = "auto",
        *,
        default_size: tuple[int, int] | None = None,  # None: the pipeline's native size (512 for SD1.5, 64 tiny)
        default_steps: int | None = None,  # None: the pipeline's own __call__ default
        default_guidance_scale: float | None = None,  # None: the pipeline's own __call__ default
        size_multiple: int = 8,  # SD's VAE downsamples by 8; other sizes crash or get cropped
        max_pixels: int | None = None,  # None: 4x the default area (1024x1024 for SD1.5)
        max_steps: int = 150,
        max_batch_size: int = 8,  # images per pipeline call; bounds activation memory
    ):
        self.device = device
        self.pipeline = _load_pipeline(location, device, _resolve_dtype(dtype, device))
        call = inspect.signature(self.pipeline.__call__).parameters
        self._accepts_negative = "negative_prompt" in call
        self._accepts_guidance = "guidance_scale" in call
        self.default_size = tuple(default_size) if default_size else _native_size(self.pipeline)
        self.default_steps = default_steps or _call_default(call, "num_inference_steps", 30)
        self.default_guidance_scale = (
            default_guidance_scale
            if default_guidance_scale is not None
            else float(_call_default(call, "guidance_scale", 7.5))
        )
        self.size_multiple = size_multiple
        self.max_pixels = max_pixels or 4 * self.default_size[0] * self.default_size[1]
        self.max_steps = max_steps
        self.max_batch_size = max_batch_size

    def generate(self, prompts: list[str], params: list[ImageParams]) -> list[Image.Image]:
        """One RGB image of exactly params[i]'s size per prompt, in input order; bad requests raise ModelInputError."""
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} params")
        params = [with_defaults(p, self.default_steps, self.default_guidance_scale) for p in params]
        for prompt, p in zip(prompts, params):
            check_request(prompt, p, self.size_multiple, self.max_pixels, self.max_steps)
            if p.negative_prompt and not self._accepts_negative:
                raise ModelInputError("this model does not support negative_prompt", param="negative_prompt")
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            groups[(p.width, p.height, p.num_inference_steps, p.guidance_scale)].append(i)
        images: list[Image.Image | None] = [None] * len(prompts)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch_size):
                chunk = indices[start : start + self.max_batch_size]
                for i, image in zip(chunk, self._run([prompts[i] for i in chunk], [params[i] for i in chunk])):
                    images[i] = image
        return images

    def _run(self, prompts: list[str], params: list[ImageParams]) -> list[Image.Image]:
        """One pipeline call for prompts that share size, steps and guidance; one seeded CPU generator per image."""
        first = params[0]
        kwargs = dict(
            prompt=prompts,
            width=first.width,
            height=first.height,
            num_inference_steps=first.num_inference_steps,
            # CPU generators make a seed give the same image on any device.
            generator=[torch.Generator("cpu").manual_seed(_seed(p)) for p in params],
            output_type="pil",
        )
        if self._accepts_guidance:
            kwargs["guidance_scale"] = first.guidance_scale
        if any(p.negative_prompt for p in params):
            kwargs["negative_prompt"] = [p.negative_prompt or "" for p in params]
        images = self.pipeline(**kwargs).images
        if len(images) != len(prompts):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(prompts)} prompts")
        size = (first.width, first.height)
        return [_exact(image.convert("RGB"), size) for image in images]


def _load_pipeline(location: str, device: str, torch_dtype: torch.dtype):
    """Load a text-to-image pipeline without safety checker or progress bars, moved to `device`."""
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    kwargs: dict = {"torch_dtype": torch_dtype}
    try:
        index = DiffusionPipeline.load_config(location)
    except (OSError, ValueError):
        index = {}
    if "safety_checker" in index:  # only SD-style pipelines take (and would load) one
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    with warnings.catch_warnings():
        # diffusers 0.42 renames torch_dtype to dtype; older releases only know torch_dtype.
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        try:
            pipeline = AutoPipelineForText2Image.from_pretrained(location, **kwargs)
        except ValueError:  # a pipeline class AutoPipeline has no text-to-image mapping for
            pipeline = DiffusionPipeline.from_pretrained(location, **kwargs)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """"auto" is float32 on CPU (half precision is slow there) and bfloat16 elsewhere (fp16 VAEs can overflow)."""
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _native_size(pipeline) -> tuple[int, int]:
    """The (width, height) the pipeline makes when not told: denoiser sample size times the VAE scale factor."""
    side = getattr(pipeline, "default_sample_size", None)
    for name in ("unet", "transformer"):
        module = getattr(pipeline, name, None)
        if side is None and module is not None:
            side = getattr(module.config, "sample_size", None)
    if isinstance(side, (tuple, list)):
        side = side[0]
    if not side:
        return (512, 512)
    pixels = int(side) * int(getattr(pipeline, "vae_scale_factor", 8))
    return (pixels, pixels)


def _call_default(call: dict[str, inspect.Parameter], name: str, fallback):
    """The default of pipeline.__call__'s `name` argument, or `fallback` when it has none."""
    param = call.get(name)
    if param is None or param.default in (inspect.Parameter.empty, None):
        return fallback
    return param.default


def _seed(params: ImageParams) -> int:
    """The request's seed, or a fresh random one."""
    return params.seed if params.seed is not None else secrets.randbits(63)


def _exact(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Guarantee the requested size even for pipelines that round it."""
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
