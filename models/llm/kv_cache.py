"""The KV cache of the batched engine: one static slot per running request, and the allocator of those slots.

Why slots and not paged blocks: on CPU there is no paged-attention kernel, so a paged cache must gather every
running sequence's blocks into a contiguous tensor before each decode attention, in every layer, at every step. A
slot cache needs no gather: the decode attention of all running sequences reads one strided view
`keys[:num_view_slots, :, :view_len]` (see attention.py). Measured on this 2-core CPU with SmolLM2-135M (fp32, 16
sequences, ~120 tokens each): 86 ms per decode step with slots vs 107 ms with 16-token pages gathered per step; the
gap grows with the context. A slot reserves `slot_len` (= max_model_len) tokens, so a request admitted to a slot can
never run out of KV memory mid-flight: no preemption is needed, and capacity is simply the number of free slots.
On CPU the tensors live in anonymous memory maps, zero-filled by the OS page by page as they are first touched, so
memory follows use: the positions of the slots a step reads or writes, not every slot's (see SlotKVCache).
"""
from __future__ import annotations

import heapq
import logging
import math
import mmap
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

INIT_CHUNK = 256  # positions zeroed at a time by ensure_initialized


@dataclass(frozen=True)
class KVShape:
    """Per-token KV geometry of a model: every attention layer stores num_kv_heads x head_dim for K and for V."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> "KVShape":
        """Read it from a transformers config (text config for multimodal wrappers)."""
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(int(config.num_hidden_layers), int(kv_heads), int(head_dim))

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element


class SlotAllocator:
    """Hands out slot numbers 0..num_slots-1, lowest first, so live slots stay packed at the low end."""

    def __init__(self, num_slots: int):
        if num_slots < 1:
            raise ValueError("num_slots must be >= 1")
        self.num_slots = num_slots
        self._free = list(range(num_slots))  # a heap
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int | None:
        """The lowest free slot, or None when all are taken."""
        if not self._free:
            return None
        slot = heapq.heappop(self._free)
        self._used.add(slot)
        return slot

    def free(self, slot: int) -> None:
        if slot not in self._used:
            raise ValueError(f"slot {slot} is not allocated")
        self._used.remove(slot)
        heapq.heappush(self._free, slot)

    def highest_used(self) -> int:
        """The highest allocated slot, -1 when none."""
        return max(self._used, default=-1)


class SlotKVCache:
    """Per layer, K and V of shape [num_slots, num_kv_heads, slot_len, head_dim]; slot s holds one request's tokens."""

    def __init__(self, shape: KVShape, num_slots: int, slot_len: int, dtype: torch.dtype, device: torch.device):
        self.shape = shape
        self.num_slots = num_slots
        self.slot_len = slot_len
        dims = (num_slots, shape.num_kv_heads, slot_len, shape.head_dim)
        # The decode attention reads every view slot up to the longest context, masking what a sequence has not
        # written; masked keys must still be finite (NaN * 0 is NaN), so the cache starts zeroed. On CUDA the memory
        # is committed anyway. On CPU zeroing it (all at once, or every slot's positions as the longest context
        # grows) would commit what no step touches: one 512-token request made 16 slots x 576 positions of
        # SmolLM2's KV resident (212 MB) where its own slot needs 13 MB. An anonymous memory map is zero from the
        # start and committed by the OS only where touched.
        alloc = _zeros_on_touch if torch.device(device).type == "cpu" else torch.zeros
        self.keys = [alloc(dims, dtype=dtype, device=device) for _ in range(shape.num_layers)]
        self.values = [alloc(dims, dtype=dtype, device=device) for _ in range(shape.num_layers)]
        self.initialized_len = slot_len

    @property
    def reserved_bytes(self) -> int:
        return self.num_slots * self.slot_len * self.shape.bytes_per_token(self.keys[0].dtype)

    def ensure_initialized(self, length: int) -> None:
        """Make positions [0, length) of every slot finite, zeroing those past `initialized_len` (INIT_CHUNK at a
        time). Call it before the step's writes, with a length covering both what is written and what is read.

        The cache starts zeroed (initialized_len = slot_len: nothing to do); tests that fill it with NaN, as
        never-written memory might hold, set initialized_len = 0 to check that no step reads past this bound."""
        if length <= self.initialized_len:
            return
        end = min(self.slot_len, -(-length // INIT_CHUNK) * INIT_CHUNK)
        for tensor in (*self.keys, *self.values):
            tensor[:, :, self.initialized_len : end].zero_()
        self.initialized_len = end

    def write(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new tokens: slots/positions [N] (long), k/v [N, num_kv_heads, head_dim]."""
        self.keys[layer][slots, :, positions] = k
        self.values[layer][slots, :, positions] = v


def _zeros_on_touch(dims: tuple[int, ...], dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.Tensor:
    """A zero CPU tensor in an anonymous memory map: the OS commits its pages only when first touched (the tensor
    keeps the map alive). Private where the platform says so: Python's default for an anonymous map is a shared
    one, which Linux backs with shared memory (and a fork would share)."""
    nbytes = math.prod(dims) * torch.empty((), dtype=dtype).element_size()
    private = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}
    return torch.frombuffer(mmap.mmap(-1, nbytes, **private), dtype=dtype).view(dims)


def fit_num_slots(shape: KVShape, wanted: int, slot_len: int, dtype: torch.dtype, budget_bytes: int) -> int:
    """How many slots of `slot_len` tokens fit in `budget_bytes` (at most `wanted`); raises when not even one."""
    per_slot = slot_len * shape.bytes_per_token(dtype)
    fits = budget_bytes // per_slot
    if fits < 1:
        raise ValueError(
            f"the KV cache of one {slot_len}-token sequence needs {per_slot / 2**30:.2f} GiB but only "
            f"{budget_bytes / 2**30:.2f} GiB are available: lower max_model_len or raise kv_cache_gb"
        )
    if fits < wanted:
        log.warning("KV cache: only %d of max_running=%d slots of %d tokens fit in %.2f GiB; running at most %d",
                    fits, wanted, slot_len, budget_bytes / 2**30, fits)
    return int(min(wanted, fits))


def default_kv_budget_bytes(device: torch.device, kv_cache_gb: float | None, gpu_share: float = 0.9,
                            reserve: int = 0) -> int:
    """`kv_cache_gb` when given; else on CUDA what `gpu_share` of the device leaves after the weights and `reserve`
    (gpu_memory.py, which also enforces the share), on CPU half of the physical memory."""
    if device.type == "cuda":
        from models.llm.gpu_memory import enforce_share, kv_budget_for_share

        if kv_cache_gb is not None:
            enforce_share(device, gpu_share)
            return int(kv_cache_gb * 2**30)
        return kv_budget_for_share(device, gpu_share, reserve)
    if kv_cache_gb is not None:
        return int(kv_cache_gb * 2**30)
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)


def prefix_cache_blocks(shape: KVShape, dtype: torch.dtype, config) -> int:
    """Blocks of `config.kv_block_size` tokens that fit in `config.prefix_cache_gb` (at least one)."""
    per_block = config.kv_block_size * shape.bytes_per_token(dtype)
    return max(1, int(config.prefix_cache_gb * 2**30) // per_block)
