"""An engine prefix cache's bookkeeping: which KV blocks hold which token prefix, who holds
them, and which to evict. Pure data on top of `BlockPool`; nothing here touches tensors.

A block is named by a hash chained over its tokens, its parent block's hash and the model
(`block_hash`), so equal hashes mean an equal prefix up to and including that block. Python's
`hash()` is salted per process, so the hash is blake2b over a stable byte encoding: the same
prompt gets the same names in every worker, the gateway and the load generator.

Only *full* blocks are cached. Sharing a partial last block would need copy-on-write: the next
request appends its own tokens into that block, so the engine would have to copy the block's
KV rows first, a tensor operation in the runner for every such hit. Not sharing it costs at
most `block_size - 1` tokens of recompute per request, which is small next to a long prefix.

Reference counts live in the pool. A cached block carries one extra pool reference, the
cache's own, so that:
- free block: pool ref count 0, not cached;
- cached and unreferenced: ref count 1, in the LRU list, evictable;
- owned: ref count = holders (+ 1 when cached); never evicted while a holder remains.
After its last holder releases it, a cached block stays until `evict` (or `allocate` when the
pool is short) takes it, least recently released first.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from flexmesh.meshcore.block_pool import BlockPool, NoFreeBlocksError

BlockHash = Hashable
"""A block's name: `bytes` from `block_hash` in the engine; any hashable value (e.g. a trace's
prefix-block ids) where the chaining was done elsewhere."""

_ROOT = b"flexmesh-prefix-v1"
"""Parent of a prompt's first block (versioned, so a change of encoding never matches old
names)."""


def block_hash(parent: bytes | None, token_ids: Sequence[int], model: str) -> bytes:
    """A 16-byte name of one block: its tokens, its parent's name (None for the first block)
    and the model, encoded with explicit lengths so that no two inputs share a byte string."""
    h = hashlib.blake2b(digest_size=16)
    h.update(_ROOT if parent is None else parent)
    name = model.encode("utf-8")
    h.update(struct.pack("<I", len(name)) + name)
    h.update(struct.pack(f"<I{len(token_ids)}q", len(token_ids), *token_ids))
    return h.digest()


def chain_hashes(token_ids: Sequence[int], block_size_tokens: int, model: str) -> list[bytes]:
    """Names of the full blocks of `token_ids` in order (a partial last block gets none)."""
    if block_size_tokens <= 0:
        raise ValueError(f"block_size_tokens must be > 0, got {block_size_tokens}")
    out: list[bytes] = []
    parent: bytes | None = None
    for start in range(0, len(token_ids) - block_size_tokens + 1, block_size_tokens):
        parent = block_hash(parent, token_ids[start : start + block_size_tokens], model)
        out.append(parent)
    return out


@dataclass(frozen=True)
class PrefixCacheStats:
    """Counters since the cache was made (a snapshot; the cache keeps counting)."""

    lookups: int
    """Calls to `match`."""
    queried_blocks: int
    """Blocks asked for by those calls."""
    hit_blocks: int
    """Blocks found (the longest cached prefix of each lookup)."""
    hit_tokens: int
    """`hit_blocks` in tokens: prefill the engine does not redo."""
    evictions: int
    """Cached blocks given back to the pool."""
    cached_blocks: int
    """Blocks cached now, held or not."""

    @property
    def hit_rate(self) -> float | None:
        """Hit blocks / queried blocks (None before any query)."""
        return self.hit_blocks / self.queried_blocks if self.queried_blocks else None


class PrefixCache:
    """Hash -> block map and LRU order of unreferenced cached blocks, over a `BlockPool`.

    A request's life: `match` its block hashes, `hold` the hits, `allocate` the rest (which
    evicts when the pool is short), `insert` each new block once its KV is computed (never a
    speculative token's), and `release` everything it holds when it ends, however it ends.
    """

    def __init__(self, pool: BlockPool, block_size_tokens: int) -> None:
        if block_size_tokens <= 0:
            raise ValueError(f"block_size_tokens must be > 0, got {block_size_tokens}")
        self.pool = pool
        self.block_size_tokens = block_size_tokens
        self._by_hash: dict[BlockHash, int] = {}
        self._hash_of: dict[int, BlockHash] = {}
        # Unreferenced cached blocks, least recently released first (the eviction order).
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._lookups = self._queried = self._hits = self._evictions = 0

    # -- queries -------------------------------------------------------------------------

    def match(self, hashes: Sequence[BlockHash], count: bool = True) -> list[int]:
        """Block ids of the longest cached prefix of `hashes` (not held: call `hold`). With
        `count=False` the caller counts the lookup itself (`count_lookup`) once it uses it: a
        waiting request may look up every step before it is admitted once."""
        ids: list[int] = []
        for h in hashes:
            block = self._by_hash.get(h)
            if block is None:
                break
            ids.append(block)
        if count:
            self.count_lookup(len(hashes), len(ids))
        return ids

    def count_lookup(self, queried_blocks: int, hit_blocks: int) -> None:
        """Count one lookup of `queried_blocks` blocks that found `hit_blocks` in `stats`."""
        self._lookups += 1
        self._queried += queried_blocks
        self._hits += hit_blocks

    def is_cached(self, block_id: int) -> bool:
        return block_id in self._hash_of

    def holders(self, block_id: int) -> int:
        """Requests holding `block_id` (the pool's count less the cache's own reference)."""
        return self.pool.ref_count(block_id) - int(block_id in self._hash_of)

    @property
    def num_evictable(self) -> int:
        """Cached blocks that no request holds."""
        return len(self._lru)

    def can_allocate(self, n: int) -> bool:
        """Whether `allocate(n)` succeeds: free blocks plus evictable ones suffice."""
        return n <= self.pool.num_free + len(self._lru)

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            lookups=self._lookups,
            queried_blocks=self._queried,
            hit_blocks=self._hits,
            hit_tokens=self._hits * self.block_size_tokens,
            evictions=self._evictions,
            cached_blocks=len(self._hash_of),
        )

    # -- holding -------------------------------------------------------------------------

    def hold(self, block_ids: Sequence[int]) -> None:
        """Add a holder to each block (cache hits); they leave the eviction order."""
        self.pool.share(list(block_ids))
        for b in block_ids:
            self._lru.pop(b, None)

    def allocate(self, n: int) -> list[int]:
        """`n` blocks held once each, evicting least recently used cached blocks as needed.

        Raises `NoFreeBlocksError` (evicting nothing) when free plus evictable blocks are
        fewer than `n`: held blocks are never taken.
        """
        if not self.can_allocate(n):
            raise NoFreeBlocksError(
                f"asked for {n} blocks, {self.pool.num_free} free + {len(self._lru)} evictable"
            )
        self.evict(n - self.pool.num_free)
        return self.pool.allocate(n)

    def release(self, block_ids: Sequence[int]) -> None:
        """Drop one holder from each block (a request ended, was aborted or preempted).

        Uncached blocks with no holder return to the pool; cached ones join the eviction order
        last block first, so a prefix is evicted from its tail: a later block is useless
        without the blocks before it.
        """
        self.pool.free(list(block_ids))
        for b in reversed(block_ids):
            if b in self._hash_of and self.pool.ref_count(b) == 1:
                self._lru[b] = None

    def insert(self, h: BlockHash, block_id: int) -> int:
        """Name a held, fully computed block `h`; returns the block now cached under `h`.

        When `h` is cached already (two requests computed the same prefix at once) the cached
        block is kept and returned, and `block_id` stays a private block of its holder.
        """
        if self.holders(block_id) <= 0:
            raise ValueError(f"block {block_id} is not held and cannot be cached")
        existing = self._by_hash.get(h)
        if existing is not None:
            return existing
        if block_id in self._hash_of:
            raise ValueError(f"block {block_id} is cached already under another hash")
        self.pool.share([block_id])
        self._by_hash[h] = block_id
        self._hash_of[block_id] = h
        return block_id

    # -- eviction ------------------------------------------------------------------------

    def evict(self, n: int) -> list[int]:
        """Return up to `n` unreferenced cached blocks to the pool, least recent first."""
        freed: list[int] = []
        while len(freed) < n and self._lru:
            b, _ = self._lru.popitem(last=False)
            del self._by_hash[self._hash_of.pop(b)]
            self.pool.free([b])
            freed.append(b)
        self._evictions += len(freed)
        return freed

    def clear(self) -> list[int]:
        """Evict every unreferenced cached block (held ones stay)."""
        return self.evict(len(self._lru))
