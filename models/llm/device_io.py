"""The engine's crossings between host and device: uploads that never block the host, one download per step.

A plain `torch.tensor(values, device="cuda")` copies from pageable memory and waits for the device to finish
everything queued before it: a host sync per small tensor. `upload` stages the values in pinned memory and copies
asynchronously (the caching host allocator keeps the staging block alive until the copy is done). `download` is
the step's one device-to-host transfer: the sampled tokens (and logprobs) of the whole batch
(tests/unit/test_llm_host_syncs.py counts them).
"""
from __future__ import annotations

import array

import torch

_TYPECODES = {torch.long: "q", torch.int32: "i", torch.float32: "f", torch.float64: "d"}  # array module codes


def upload(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of `values` on `device`; on CUDA copied from pinned memory without waiting for the device."""
    code = _TYPECODES.get(dtype)
    if code is not None and values and not isinstance(values[0], (list, tuple)):
        host = torch.frombuffer(array.array(code, values), dtype=dtype)  # faster than torch.tensor from a list
    else:
        host = torch.tensor(values, dtype=dtype)
    return upload_tensor(host, device)


def upload_tensor(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` (a CPU tensor) on `device`, copied as `upload` does (on the CPU, `host` itself)."""
    if device.type == "cpu":
        return host
    if device.type != "cuda":  # pinned staging is CUDA's
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def copy_into(target: torch.Tensor, host: torch.Tensor) -> None:
    """Copy the CPU tensor `host` into `target` (same shape, any device), as `upload` does."""
    if target.device.type == "cuda":
        target.copy_(host.pin_memory(), non_blocking=True)
    else:
        target.copy_(host)


def download(tensor: torch.Tensor) -> list:
    """The values of `tensor` as Python numbers: waits for the device (the step's one sync)."""
    return tensor.tolist()
