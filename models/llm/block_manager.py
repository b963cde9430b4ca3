"""KV blocks keyed by the tokens they hold: the bookkeeping of prefix caching, independent of where the KV lives.

A block is `block_size` consecutive tokens of a sequence, starting at a multiple of `block_size`. Its KV depends on
every token before it, so a full block is keyed by a chained hash, as vLLM's: sha256(parent's key + its tokens).
Two sequences whose first n blocks have equal keys have equal KV there (same model, same positions).

`BlockPool` owns `num_blocks` physical block ids. A cached block is found by its key; `acquire` counts a
reference, `release` drops it, and a block nobody references stays cached until its id is needed for a new
block: then the least recently used unreferenced one is evicted. Pure Python: the tensors are prefix_cache.py's.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

ROOT_KEY = b""  # the parent key of a sequence's first block


def block_keys(tokens: list[int], block_size: int, count: int | None = None, parent: bytes = ROOT_KEY
               ) -> list[bytes]:
    """The chained keys of the first `count` full blocks of `tokens` (all full blocks when None); `parent`: the
    key of the block before `tokens[0]` (ROOT_KEY at a sequence's start)."""
    full = len(tokens) // block_size
    count = full if count is None else min(count, full)
    keys = []
    for b in range(count):
        chunk = array("q", tokens[b * block_size : (b + 1) * block_size]).tobytes()
        parent = hashlib.sha256(parent + chunk).digest()
        keys.append(parent)
    return keys


@dataclass
class _Block:
    key: bytes | None = None  # None: free (holds nothing)
    refs: int = 0


class BlockPool:
    """Block ids 0..num_blocks-1, cached by key, reference-counted, unreferenced ones evicted least recent first."""

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        self.num_blocks = num_blocks
        self._blocks = [_Block() for _ in range(num_blocks)]
        self._by_key: dict[bytes, int] = {}
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: lowest id first
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; oldest use first

    @property
    def num_cached(self) -> int:
        return len(self._by_key)

    @property
    def num_free(self) -> int:
        """Ids that can take a new block now: never used, or cached and unreferenced."""
        return len(self._free) + len(self._evictable)

    def match(self, keys: list[bytes]) -> list[int]:
        """The ids of the longest run of `keys`, from the first, that is cached; each is acquired (release later)."""
        found = []
        for key in keys:
            block_id = self._by_key.get(key)
            if block_id is None:
                break
            found.append(block_id)
        self.acquire(found)
        return found

    def acquire(self, block_ids: list[int]) -> None:
        for block_id in block_ids:
            block = self._blocks[block_id]
            block.refs += 1
            self._evictable.pop(block_id, None)

    def release(self, block_ids: list[int]) -> None:
        """Drop one reference to each; a cached block left unreferenced becomes the most recently used evictable."""
        for block_id in block_ids:
            block = self._blocks[block_id]
            if block.refs < 1:
                raise ValueError(f"block {block_id} is not referenced")
            block.refs -= 1
            if block.refs == 0:
                if block.key is None:
                    self._free.append(block_id)
                else:
                    self._evictable[block_id] = None

    def allocate(self, key: bytes) -> int | None:
        """An id for a new block cached under `key`, acquired once, evicting the least recently used unreferenced
        block if none is free; None when `key` is already cached or every block is referenced."""
        if key in self._by_key:
            return None
        if self._free:
            block_id = self._free.pop()
        elif self._evictable:
            block_id, _ = self._evictable.popitem(last=False)
            del self._by_key[self._blocks[block_id].key]
        else:
            return None
        block = self._blocks[block_id]
        block.key, block.refs = key, 1
        self._by_key[key] = block_id
        return block_id

    def forget(self, block_id: int) -> None:
        """Uncache a block whose contents could not be written (it must hold exactly the caller's reference)."""
        block = self._blocks[block_id]
        if block.refs != 1 or block.key is None:
            raise ValueError(f"block {block_id} is not a fresh allocation")
        del self._by_key[block.key]
        block.key, block.refs = None, 0
        self._free.append(block_id)

    def free_ids(self) -> list[int]:
        """Ids that hold nothing (never used or forgotten): tests poison their memory."""
        return list(self._free)
