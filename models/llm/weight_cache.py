"""Weight forms derived at load (int4, native 4/8-bit) cached as a safetensors file beside the weights they came
from: read when present, else captured and written atomically; a damaged file is captured again, never fatal."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Callable, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


def cached(path: str, capture: Callable[[], T], write: Callable[[str, T], None], read: Callable[[str], T],
           what: str) -> T:
    """read(path) when the file exists and reads, else capture(), written with write(path, found) (best effort)."""
    if os.path.isfile(path):
        try:
            return read(path)
        except Exception as e:  # noqa: BLE001 - a damaged cache is recomputed, never fatal
            log.warning("%s cache %s unreadable (%s); capturing again", what, path, e)
    found = capture()
    try:
        write(path, found)
    except OSError as e:  # a read-only folder: capture again next time
        log.info("%s cache not written to %s: %s", what, path, e)
    return found


def save(path: str, tensors: dict[str, torch.Tensor], shapes: dict) -> None:
    """Atomically (temporary file, then rename) write `tensors` with `shapes` (JSON) as metadata."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(prefix=".cache-", dir=os.path.dirname(path))
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"shapes": json.dumps(shapes)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the shapes metadata, every tensor copied into the process's own memory). A tensor left on the file's mapping
    keeps the whole file mapped, which counts in the engine's PSS on top of what the copies take (+23 MB measured
    for SmolLM2's int4 cache)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        shapes = json.loads(f.metadata()["shapes"])
        return shapes, {name: f.get_tensor(name).clone() for name in f.keys()}
