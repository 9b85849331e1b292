"""The scheduler with `engine.prefix_cache` on, no model: hits start a request after its cached
prefix (computed here or imported), a decode side's reservation holds its cached prefix and
reserves the rest, and after any mix of steps, finishes, aborts, preemptions, migrations (a
request added again with its tokens) and hand-offs (reserved, arrived, failed, expired), every
block is free or cached with no owner."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flexmesh.meshcore.block_pool import blocks_needed
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.request import Request, RequestStatus
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.meshcore.scheduler import Scheduler

BLOCK = 4
PREFIXES = [list(range(100, 112)), list(range(200, 208)), []]


def _sched(blocks: int) -> Scheduler:
    cfg = EngineConfig(
        block_size_tokens=BLOCK, max_batched_tokens=32, max_num_seqs=4, prefix_cache=True
    )
    return Scheduler(cfg, blocks, max_model_len_tokens=256)


def _step(s: Scheduler, now: float = 0.0) -> None:
    plan = s.schedule(now)
    s.update_from_output(plan, {c.request_id: [7] for c in plan.chunks if c.samples}, now)


def _settled(s: Scheduler) -> None:
    """Holders are the requests' block tables; every other block is free or cached, unowned."""
    cache = s.cache
    assert cache is not None
    held: dict[int, int] = {}
    for r in s.requests.values():
        for b in r.block_ids:
            held[b] = held.get(b, 0) + 1
    for b in range(s.pool.num_blocks):
        assert s.pool.ref_count(b) == held.get(b, 0) + cache.is_cached(b), b
    for r in s.requests.values():
        if r.status == RequestStatus.WAITING_FOR_KV:  # its held prefix is cached, in order
            assert (
                cache.match(r.block_hashes[: r.num_cached_blocks])
                == r.block_ids[: r.num_cached_blocks]
            )


def _handed(rid: str, prompt: list[int]) -> Request:
    """A request as a decode worker resumes it: its prompt and first token."""
    return Request(rid, prompt, SamplingParams(max_tokens=4), output_token_ids=[7])


def test_a_second_request_starts_after_the_cached_prefix() -> None:
    s = _sched(32)
    prompt = list(range(1, 14))  # 13 tokens: 3 full blocks before the last token
    s.add(Request("a", prompt, SamplingParams(max_tokens=2)))
    while s.has_unfinished():
        _step(s)
    s.add(Request("b", [*prompt, 99], SamplingParams(max_tokens=2)))
    plan = s.schedule(0.0)
    (chunk,) = plan.chunks
    assert chunk.start == 3 * BLOCK and s.cache is not None  # the hit is not computed again
    assert s.cache.stats().hit_tokens == 3 * BLOCK


def test_a_request_that_waits_is_counted_once_when_admitted() -> None:
    cfg = EngineConfig(block_size_tokens=BLOCK, max_batched_tokens=32, prefix_cache=True)
    s = Scheduler(cfg, 8, max_model_len_tokens=256)
    prompt = list(range(1, 14))
    s.add(Request("a", prompt, SamplingParams(max_tokens=2)))
    while s.has_unfinished():
        _step(s)
    assert s.cache is not None
    before = s.cache.stats()
    s.add(Request("hog", list(range(50, 70)), SamplingParams(max_tokens=8, ignore_eos=True)))
    b = Request("b", [*prompt, 99], SamplingParams(max_tokens=2))
    s.add(b)
    for _ in range(3):  # the hog's blocks leave "b" waiting: it looks up every step
        _step(s)
        assert b.status == RequestStatus.WAITING
    start = None
    while start is None:
        plan = s.schedule(0.0)
        start = next((c.start for c in plan.chunks if c.request_id == "b"), None)
        s.update_from_output(plan, {c.request_id: [7] for c in plan.chunks if c.samples}, 0.0)
    after = s.cache.stats()
    assert after.lookups - before.lookups == 2  # the hog's and b's, once each
    assert after.hit_tokens - before.hit_tokens == start  # b's hit, where it started


RESERVE = st.tuples(
    st.just("reserve"), st.integers(0, 2), st.integers(1, 10), st.integers(0, 4), st.integers(1, 3)
)
"""A decode side's reservation: prefix, prompt tokens after it, KV tokens short of the
prompt, deadline."""
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 2), st.integers(1, 14), st.integers(1, 6)),
        st.tuples(st.just("step"), st.integers(1, 3)),
        st.tuples(st.just("abort"), st.integers(0, 7)),
        st.tuples(st.just("migrate"), st.integers(0, 7)),
        st.tuples(st.just("hand_off_fails"), st.integers(0, 2), st.integers(2, 10)),
        RESERVE,
        st.tuples(st.just("arrive"), st.integers(0, 7)),
        st.tuples(st.just("kv_fails"), st.integers(0, 7)),
        st.tuples(st.just("expire"), st.integers(0, 3)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, blocks=st.integers(8, 24))
def test_blocks_are_always_free_cached_or_owned(ops: list[tuple], blocks: int) -> None:
    s = _sched(blocks)
    n = 0
    kv_tokens: dict[str, int] = {}
    for op in ops:
        ids = sorted(s.requests)
        parked = [r for r in ids if s.requests[r].status == RequestStatus.WAITING_FOR_KV]
        if op[0] == "add":
            _, prefix, extra, max_tokens = op
            prompt = PREFIXES[prefix] + list(range(1, extra + 1))
            s.add(Request(f"r{n}", prompt, SamplingParams(max_tokens=max_tokens)))
            n += 1
        elif op[0] == "step":
            for _ in range(op[1]):
                _step(s)
        elif op[0] in ("abort", "migrate") and ids:
            req = s.abort(ids[op[1] % len(ids)])
            if op[0] == "migrate" and req is not None:  # resumed elsewhere with its tokens
                s.add(Request(f"r{n}", req.all_token_ids, SamplingParams(max_tokens=2)))
                n += 1
        elif op[0] == "hand_off_fails":
            _, prefix, extra = op
            req = Request(f"r{n}", PREFIXES[prefix] + list(range(1, extra + 2)), SamplingParams())
            n += 1
            if s.reserve_for_kv(req, extra, deadline=1.0):
                s.kv_failed(req.request_id)  # recomputed here, from its prefix if cached
        elif op[0] == "reserve":
            _, prefix, extra, cut, deadline = op
            req = _handed(f"r{n}", PREFIXES[prefix] + list(range(1, extra + 1)))
            n += 1
            kv = max(1, req.num_prompt_tokens - cut)  # the whole prompt, or less of it
            if s.reserve_for_kv(req, kv, deadline=float(deadline)):
                kv_tokens[req.request_id] = kv
                assert len(req.block_ids) == blocks_needed(kv, BLOCK)
                assert req.num_cached_blocks * BLOCK < kv  # at least one block travels
            else:
                assert not req.block_ids and req.request_id not in s.requests
        elif op[0] == "arrive" and parked:
            rid = parked[op[1] % len(parked)]
            _arrive(s, rid, kv_tokens[rid])
        elif op[0] == "kv_fails" and parked:
            s.kv_failed(parked[op[1] % len(parked)])  # recomputed here, from its prefix if cached
        elif op[0] == "expire":
            s.expire(float(op[1]))
        _settled(s)
    for rid in [r for r, req in s.requests.items() if req.status == RequestStatus.WAITING_FOR_KV]:
        _arrive(s, rid, kv_tokens[rid])
    while s.has_unfinished():
        _step(s)
        _settled(s)
    assert s.cache is not None and not s.requests
    s.cache.clear()
    assert s.pool.num_free == s.pool.num_blocks


def _arrive(s: Scheduler, rid: str, kv: int) -> None:
    """The KV of `rid` arrives: its whole imported prompt blocks are cached from then on."""
    s.kv_arrived(rid, kv)
    req = s.requests[rid]
    assert s.cache is not None and req.num_computed_tokens == kv
    whole = min(min(kv, req.num_prompt_tokens) // BLOCK, len(req.block_hashes))
    assert len(s.cache.match(req.block_hashes[:whole])) == whole


def test_a_reservation_holds_the_cached_prefix_and_reserves_the_rest() -> None:
    s = _sched(8)
    prompt = list(range(1, 14))  # 13 tokens: 3 full blocks before the last token
    s.add(Request("a", prompt, SamplingParams(max_tokens=2)))
    while s.has_unfinished():
        _step(s)
    assert s.cache is not None and s.cache.num_evictable == 3
    # 17 KV tokens, 5 blocks: the 3 cached ones are held, 2 are reserved for what travels.
    b = _handed("b", [*prompt, 99, 98, 97, 96])
    assert s.reserve_for_kv(b, 17, deadline=1.0)
    assert b.num_cached_blocks == 3 and len(b.block_ids) == 5 and s.cache.num_evictable == 0
    assert s.pool.num_free == 8 - 5
    _settled(s)
    s.kv_arrived("b", 17)
    (chunk,) = s.schedule(0.0).chunks
    assert chunk.start == 17  # computed up to its KV, the held prefix included
    # Not enough blocks for the rest: nothing stays held, the hits go back to the cache.
    c = _handed("c", [*prompt, 98, *range(200, 215)])  # 8 blocks, 3 of them cached
    assert not s.reserve_for_kv(c, c.num_prompt_tokens, deadline=1.0)
    assert not c.block_ids and c.num_cached_blocks == 0
    _settled(s)
    s.abort("b")
    assert s.cache.num_evictable == 4  # b's imported full prompt block joined the cache
    _settled(s)
    # KV ending on a cached block's end: that block travels (a transfer is never empty).
    d = _handed("d", prompt)
    assert s.reserve_for_kv(d, 12, deadline=1.0)
    assert d.num_cached_blocks == 2 and len(d.block_ids) == 3
    s.kv_failed("d")
    assert not d.block_ids and s.cache.num_evictable == 4
    _settled(s)
