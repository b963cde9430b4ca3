"""GPU memory by share: a replica's KV budget comes from its share of the device, and the share is enforced.

A replica given `share` of a GPU (Serve's `num_gpus: 0.5`) may use `total x share` bytes: its weights, a reserve
for activations, logits and CUDA graphs, and the KV cache in what is left. The share is enforced with
`torch.cuda.set_per_process_memory_fraction`, so two tenants at 0.5 never add up to more than the device, whichever
loads first; the budget is also capped by what is free at load, for a tenant that set no fraction.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

GIB = 2**30
CONTEXT_RESERVE = GIB  # the CUDA context, cuBLAS workspaces and graph pools, outside the tensors we size


@dataclass(frozen=True)
class GpuMemoryPlan:
    """How one replica divides its share of a device (bytes)."""

    total: int  # the device's memory
    share: float  # the fraction of it this replica may use
    weights: int  # already allocated by this process at load (the model)
    reserve: int  # activations, logits, sampler tables, graphs (activation_reserve)
    free: int  # free on the device at load (other tenants' allocations are not)

    @property
    def limit(self) -> int:
        return int(self.total * self.share)

    @property
    def kv_bytes(self) -> int:
        """What is left for the KV cache within the share and within the free memory; may be <= 0."""
        return min(self.limit - self.weights - self.reserve, self.free - self.reserve)


def activation_reserve(hidden_size: int, intermediate_size: int, vocab_size: int, max_batched_tokens: int,
                       max_running: int, element_size: int) -> int:
    """A bound on one step's transient memory: the live [T, hidden] and [T, intermediate] tensors of a layer (layers
    run one after another), fp32 logits and the sampler's [rows, vocab] work tensors, plus CONTEXT_RESERVE."""
    tokens = max_batched_tokens
    layer = tokens * (6 * hidden_size + 3 * intermediate_size) * element_size  # q/k/v/o, residual; gate/up/act
    logits = max(tokens, max_running) * vocab_size * 4  # the step's logits in fp32
    sampler = 4 * max_running * vocab_size * 4  # probabilities, noise, masks, penalties
    return CONTEXT_RESERVE + layer + logits + sampler


def activation_reserve_of(config, max_batched_tokens: int, max_running: int, dtype: torch.dtype) -> int:
    """activation_reserve for a transformers config (its text config for multimodal wrappers)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    element = torch.empty((), dtype=dtype).element_size()
    return activation_reserve(config.hidden_size, config.intermediate_size, config.vocab_size, max_batched_tokens,
                              max_running, element)


def plan_for_device(device: torch.device, share: float, reserve: int) -> GpuMemoryPlan:
    """The plan of this process on `device` now (its weights loaded): total and free from mem_get_info."""
    if not 0 < share <= 1:
        raise ValueError(f"gpu_memory_share must be in (0, 1], got {share}")
    free, total = torch.cuda.mem_get_info(device)
    return GpuMemoryPlan(total=int(total), share=share, weights=int(torch.cuda.memory_allocated(device)),
                         reserve=reserve, free=int(free))


def enforce_share(device: torch.device, share: float) -> None:
    """Make the caching allocator refuse to grow past `share` of the device (an OOM error instead of a neighbour's
    memory)."""
    torch.cuda.set_per_process_memory_fraction(share, device)


def kv_budget_for_share(device: torch.device, share: float, reserve: int) -> int:
    """Enforce `share` on `device` and return the KV budget in bytes; ValueError when the share cannot hold the
    weights and the reserve."""
    plan = plan_for_device(device, share, reserve)
    if plan.kv_bytes <= 0:
        raise ValueError(
            f"GPU share {share} of {plan.total / GIB:.1f} GiB ({plan.limit / GIB:.1f} GiB; {plan.free / GIB:.1f} "
            f"GiB free) cannot hold the weights ({plan.weights / GIB:.1f} GiB) and the {plan.reserve / GIB:.1f} GiB "
            "reserve: raise the share, lower max_batched_tokens / max_running, or use a smaller model")
    enforce_share(device, share)
    log.info("GPU memory: share %.2f of %.1f GiB = %.1f GiB: weights %.1f, reserve %.1f, KV %.1f GiB", share,
             plan.total / GIB, plan.limit / GIB, plan.weights / GIB, plan.reserve / GIB, plan.kv_bytes / GIB)
    return plan.kv_bytes
