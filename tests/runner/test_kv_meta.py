"""KV hand-off metadata, checksums, the object-store form and the staging buffer pool."""

from __future__ import annotations

import pytest
import torch

from flexmesh.actors.kv import BufferPool, KVMeta, describe, from_numpy, to_numpy


def test_meta_round_trips_as_msgpack_and_catches_corruption() -> None:
    kv = torch.randn(2, 2, 3, 16, 4, 8)
    meta = describe(kv, "r1", "demo-large")
    assert KVMeta.unpack(meta.pack()) == meta
    assert meta.nbytes == kv.numel() * 4
    meta.check(kv.clone(), "demo-large")
    bad = kv.clone()
    bad[1, 0, 2, 5, 1, 3] += 1.0
    with pytest.raises(ValueError, match="corrupted"):
        meta.check(bad, "demo-large")
    with pytest.raises(ValueError, match="cannot go here"):
        meta.check(kv, "demo-small")
    with pytest.raises(ValueError, match="is not"):
        meta.check(kv[:, :, :2].contiguous(), "demo-large")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_object_store_form_keeps_every_bit(dtype: torch.dtype) -> None:
    kv = torch.randn(2, 2, 3, 16, 4, 8).to(dtype)
    meta = describe(kv, "r1", "m")
    back = from_numpy(to_numpy(kv), meta)
    assert back.dtype == dtype and torch.equal(back, kv)
    meta.check(back, "m")


def test_buffer_pool_reuses_memory_and_bounds_what_it_keeps() -> None:
    pool = BufferPool(max_cached_bytes=4000)
    a = pool.take((10, 10), torch.float32)
    ptr = a.data_ptr()
    pool.give(a)
    b = pool.take((5, 10), torch.float32)  # fits in the returned buffer
    assert b.data_ptr() == ptr and b.shape == (5, 10)
    c = pool.take((20, 10), torch.float32)  # too large for it: new memory
    assert c.data_ptr() != ptr
    pool.give(b)
    pool.give(c)
    big = pool.take((2000,), torch.float32)
    pool.give(big)  # 8000 bytes: over the bound, the largest buffer is dropped first
    assert sorted(t.numel() * 4 for t in pool._free) == [400, 800]


def test_buffer_pool_takes_the_smallest_fit_among_buffers_of_other_sizes() -> None:
    pool = BufferPool()
    small, same, large = (pool.take((n,), torch.float32) for n in (8, 32, 32))
    for t in (small, same, large):
        pool.give(t)
    # Two free buffers of 32 and a smaller one before them: the pick is by identity, never by
    # comparing tensors (which raised for buffers of other sizes, failing a hand-off).
    got = pool.take((20,), torch.float32)
    assert got.data_ptr() in (same.data_ptr(), large.data_ptr())
    assert sorted(b.numel() for b in pool._free) == [8, 32]
