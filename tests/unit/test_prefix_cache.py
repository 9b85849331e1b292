"""The prefix cache's bookkeeping: hashing, match / insert / evict, LRU order, and reference
counts under random sequences of requests that start, compute, finish, abort and evict."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexmesh.meshcore.block_pool import BlockPool, NoFreeBlocksError
from flexmesh.meshcore.prefix_cache import PrefixCache, block_hash, chain_hashes


def test_block_hash_is_chained_stable_and_names_the_model() -> None:
    a = chain_hashes(list(range(10)), 4, "m")
    assert len(a) == 2  # 10 tokens: two full blocks, the partial one gets no name
    assert a == chain_hashes(list(range(10)), 4, "m")
    assert a[0] == block_hash(None, [0, 1, 2, 3], "m")
    assert a[1] == block_hash(a[0], [4, 5, 6, 7], "m")
    assert chain_hashes(list(range(8)), 4, "other")[0] != a[0]
    # The same tokens after a different first block are a different block.
    assert chain_hashes([9, 9, 9, 9, 4, 5, 6, 7], 4, "m")[1] != a[1]
    assert len(block_hash(None, [], "m")) == 16
    # Pinned: names must be equal across processes (no salted `hash()`) and releases.
    assert block_hash(None, [1, 2], "m").hex() == "38d8fa200f264771199a0c5d1a723ae2"


def _serve(cache: PrefixCache, hashes: list[str]) -> list[int]:
    """One request: hold the hits, allocate and cache the rest (computed), return its blocks."""
    hit = cache.match(hashes)
    cache.hold(hit)
    new = cache.allocate(len(hashes) - len(hit))
    for h, b in zip(hashes[len(hit) :], new, strict=True):
        cache.insert(h, b)
    return hit + new


def test_match_returns_longest_cached_prefix_and_counts() -> None:
    cache = PrefixCache(BlockPool(8), block_size_tokens=16)
    blocks = _serve(cache, ["a", "b", "c"])
    cache.release(blocks)
    assert cache.match(["a", "b", "x", "c"]) == blocks[:2]
    assert cache.match(["x", "a"]) == []
    s = cache.stats()
    assert (s.lookups, s.queried_blocks, s.hit_blocks, s.hit_tokens) == (3, 9, 2, 32)
    assert s.cached_blocks == 3 and s.evictions == 0
    assert cache.pool.num_free == 5 and cache.num_evictable == 3


def test_insert_keeps_the_first_block_of_a_hash() -> None:
    cache = PrefixCache(BlockPool(4), block_size_tokens=1)
    first, second = cache.allocate(1), cache.allocate(1)
    assert cache.insert("a", first[0]) == first[0]
    assert cache.insert("a", second[0]) == first[0]  # computed twice at once: keep one
    cache.release(second)
    assert cache.pool.ref_count(second[0]) == 0  # the duplicate was private: freed
    with pytest.raises(ValueError):
        cache.insert("b", second[0])  # not held


def test_eviction_is_lru_among_unreferenced_and_tail_first() -> None:
    cache = PrefixCache(BlockPool(6), block_size_tokens=1)
    x = _serve(cache, ["a", "b"])
    y = _serve(cache, ["c", "d"])
    cache.release(x)
    cache.release(y)
    # x was released first; within a request the tail goes before the head.
    assert cache.evict(1) == [x[1]]
    held = cache.match(["c"])
    cache.hold(held)
    assert cache.evict(10) == [x[0], y[1]]  # "c" is held: never evicted
    assert cache.match(["c", "d"]) == held
    assert cache.stats().evictions == 3
    cache.release(held)
    assert cache.clear() == held and cache.pool.num_free == 6


def test_allocate_evicts_only_when_short_and_refuses_beyond_evictable() -> None:
    cache = PrefixCache(BlockPool(4), block_size_tokens=1)
    old = _serve(cache, ["a", "b"])
    cache.release(old)
    live = _serve(cache, ["c"])
    assert cache.allocate(1) and cache.stats().evictions == 0  # a free block was enough
    assert not cache.can_allocate(3)
    with pytest.raises(NoFreeBlocksError):
        cache.allocate(3)
    assert cache.stats().evictions == 0  # a refused allocation evicts nothing
    got = cache.allocate(2)
    assert sorted(got) == sorted(old) and cache.match(["a"]) == []
    assert cache.holders(live[0]) == 1


# -- property test --------------------------------------------------------------------------

NUM_BLOCKS = 12
PROMPTS = st.lists(st.sampled_from("abc"), min_size=1, max_size=6)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("start"), PROMPTS),
        st.tuples(st.just("compute"), st.integers(0, 7)),
        st.tuples(st.just("finish"), st.integers(0, 7)),
        st.tuples(st.just("abort"), st.integers(0, 7)),
        st.tuples(st.just("evict"), st.integers(0, NUM_BLOCKS)),
    ),
    max_size=40,
)


class _Req:
    def __init__(self, hashes: list[str], blocks: list[int], hits: int) -> None:
        self.hashes, self.blocks, self.computed = hashes, blocks, hits


def _check(cache: PrefixCache, live: list[_Req]) -> None:
    holders = [0] * NUM_BLOCKS
    for r in live:
        for b in r.blocks:
            holders[b] += 1
    for b in range(NUM_BLOCKS):
        ref, cached = cache.pool.ref_count(b), cache.is_cached(b)
        assert ref == holders[b] + cached, (b, ref, holders[b], cached)
        assert cache.holders(b) == holders[b]
    # Free, cached with no owner, or owned: the pool's free list agrees with the counts.
    assert cache.pool.num_free == sum(cache.pool.ref_count(b) == 0 for b in range(NUM_BLOCKS))
    unowned_cached = sum(cache.is_cached(b) and holders[b] == 0 for b in range(NUM_BLOCKS))
    assert cache.num_evictable == unowned_cached


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_reference_counts_hold_under_any_operation_sequence(ops: list[tuple[str, object]]) -> None:
    cache = PrefixCache(BlockPool(NUM_BLOCKS), block_size_tokens=4)
    live: list[_Req] = []
    for op, arg in ops:
        if op == "start":
            assert isinstance(arg, list)
            # Chained names: a block's name is its whole prefix, as block_hash makes it.
            hashes = ["".join(arg[: i + 1]) for i in range(len(arg))]
            hit = cache.match(hashes)
            need = len(hashes) - len(hit)
            cache.hold(hit)  # first: held hits are no longer evictable room (as the scheduler)
            if cache.can_allocate(need):
                live.append(_Req(hashes, hit + cache.allocate(need), len(hit)))
            else:  # refused, as the scheduler refuses it today
                cache.release(hit)
        elif live and op in ("compute", "finish", "abort"):
            assert isinstance(arg, int)
            r = live[arg % len(live)]
            if op == "compute" and r.computed < len(r.hashes):
                cache.insert(r.hashes[r.computed], r.blocks[r.computed])
                r.computed += 1
            elif op != "compute":
                live.remove(r)
                cache.release(r.blocks)
        elif op == "evict":
            assert isinstance(arg, int)
            held = {b for r in live for b in r.blocks}
            assert not held & set(cache.evict(arg))  # a held block is never evicted
        _check(cache, live)
    for r in live:
        cache.release(r.blocks)
    cache.clear()
    _check(cache, [])
    assert cache.pool.num_free == NUM_BLOCKS and cache.stats().cached_blocks == 0
