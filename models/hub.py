"""Hugging Face Hub snapshots in the normal HF cache (HF_HOME / HF_HUB_CACHE), honouring HF_HUB_OFFLINE and a token.

Only what a loader needs is fetched: other frameworks' weights are skipped, and so are PyTorch pickles when the
repository has safetensors.
"""
from __future__ import annotations

import os
import time
from typing import Callable

# Weights for other frameworks and runtimes; none of this project's loaders read them.
OTHER_FRAMEWORKS = [
    "*.h5", "*.msgpack", "*.ot", "*.tflite", "tf_model*", "flax_model*", "rust_model*", "onnx/*", "openvino/*",
    "coreml/*",
]
PICKLED_WEIGHTS = ["*.bin", "*.pt", "*.pth", "*.ckpt"]


class HubError(RuntimeError):
    """A snapshot that cannot be had (offline and not cached, unknown repository or revision, no access)."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, not when huggingface_hub was imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def download_snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    files: list[str] | None = None,
    local_only: bool = False,
    progress: Callable[[str], None] | None = None,
) -> str:
    """The local folder of `repo_id` at `revision`, downloaded into the HF cache unless it is there already.

    files: only these paths in the repository (and nothing else). local_only (or HF_HUB_OFFLINE): the cache only.
    token: None uses HF_TOKEN or the token saved by `hf auth login`.
    """
    from huggingface_hub import snapshot_download

    offline = local_only or hub_offline()
    if files:
        kwargs = {"allow_patterns": files}
    else:
        kwargs = {"ignore_patterns": _ignore_patterns(repo_id, revision, token, offline)}
    started = time.monotonic()
    try:
        path = snapshot_download(
            repo_id, revision=revision, token=token, local_files_only=offline,
            tqdm_class=_progress_class(repo_id, progress) if progress and not offline else None, **kwargs,
        )
    except Exception as e:  # the hub's errors are many (HTTP, offline, not found, gated): say which repo failed
        raise HubError(_explain(repo_id, revision, offline, e)) from None
    if progress:
        progress(f"{repo_id}: snapshot at {path} ({time.monotonic() - started:.1f} s)")
    return path


def _ignore_patterns(repo_id: str, revision: str | None, token: str | None, offline: bool) -> list[str]:
    if offline:
        return OTHER_FRAMEWORKS
    try:
        from huggingface_hub import list_repo_files

        names = list_repo_files(repo_id, revision=revision, token=token)
    except Exception:  # the download that follows reports the real problem
        return OTHER_FRAMEWORKS
    has_safetensors = any(name.endswith(".safetensors") for name in names)
    return OTHER_FRAMEWORKS + (PICKLED_WEIGHTS if has_safetensors else [])


def _explain(repo_id: str, revision: str | None, offline: bool, error: Exception) -> str:
    what = f"`{repo_id}`" + (f" at revision `{revision}`" if revision else "")
    if offline:
        return (
            f"Hugging Face model {what} is not in the local HF cache and downloads are off (HF_HUB_OFFLINE=1); "
            f"download it once with network access, or unset HF_HUB_OFFLINE ({type(error).__name__})"
        )
    return f"cannot download Hugging Face model {what}: {type(error).__name__}: {error}"


def _progress_class(repo_id: str, report: Callable[[str], None]):
    """A tqdm class that reports through `report` (at most every 10 s, and at the end) instead of drawing."""
    from tqdm.auto import tqdm

    class ReportingProgress(tqdm):
        _last = 0.0

        def display(self, msg=None, pos=None):  # tqdm calls this to redraw
            now = time.monotonic()
            if now - self._last >= 10 or (self.total and self.n >= self.total):
                self._last = now
                report(f"{repo_id}: {self.desc or 'download'} {self.format_sizeof(self.n)}B"
                       + (f" of {self.format_sizeof(self.total)}B" if self.total else ""))
            return True

    return ReportingProgress
