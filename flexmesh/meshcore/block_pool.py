"""The paged KV cache's bookkeeping: which block ids are free and who holds each one."""

from __future__ import annotations

from collections import deque


class NoFreeBlocksError(RuntimeError):
    """Raised by `allocate` when the pool cannot satisfy a request (the scheduler avoids it)."""


def blocks_needed(num_tokens: int, block_size_tokens: int) -> int:
    """Blocks required to hold `num_tokens` KV entries."""
    return -(-num_tokens // block_size_tokens)


class BlockPool:
    """A fixed set of KV block ids with reference counts (shared prefixes hold a block twice)."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._ref_counts = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        """Take `n` free blocks, each with reference count 1."""
        if n > len(self._free):
            raise NoFreeBlocksError(f"asked for {n} blocks, {len(self._free)} free")
        ids = [self._free.popleft() for _ in range(n)]
        for i in ids:
            self._ref_counts[i] = 1
        return ids

    def share(self, block_ids: list[int]) -> None:
        """Add a holder to blocks already in use (prefix sharing)."""
        for i in block_ids:
            if self._ref_counts[i] <= 0:
                raise ValueError(f"block {i} is free and cannot be shared")
            self._ref_counts[i] += 1

    def free(self, block_ids: list[int]) -> None:
        """Drop one holder from each block; a block with no holder returns to the pool."""
        for i in block_ids:
            if self._ref_counts[i] <= 0:
                raise ValueError(f"block {i} freed twice")
            self._ref_counts[i] -= 1
            if self._ref_counts[i] == 0:
                self._free.append(i)

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]
