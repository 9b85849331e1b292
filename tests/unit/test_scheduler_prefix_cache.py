"""The scheduler with `engine.prefix_cache` on, no model: hits start a request after its cached
prefix, and after any mix of steps, finishes, aborts, preemptions, migrations (a request added
again with its tokens) and failed hand-offs, every block is free or cached with no owner."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

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


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 2), st.integers(1, 14), st.integers(1, 6)),
        st.tuples(st.just("step"), st.integers(1, 3)),
        st.tuples(st.just("abort"), st.integers(0, 7)),
        st.tuples(st.just("migrate"), st.integers(0, 7)),
        st.tuples(st.just("hand_off_fails"), st.integers(0, 2), st.integers(2, 10)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, blocks=st.integers(8, 24))
def test_blocks_are_always_free_cached_or_owned(ops: list[tuple], blocks: int) -> None:
    s = _sched(blocks)
    n = 0
    for op in ops:
        ids = sorted(s.requests)
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
        _settled(s)
        assert all(r.status != RequestStatus.WAITING_FOR_KV for r in s.requests.values())
    while s.has_unfinished():
        _step(s)
        _settled(s)
    assert s.cache is not None and not s.requests
    s.cache.clear()
    assert s.pool.num_free == s.pool.num_blocks
