"""Scheduler and block pool with fake requests and hand-made step results (no model)."""

from __future__ import annotations

import pytest

from flexmesh.meshcore.block_pool import BlockPool, NoFreeBlocksError
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.meshcore.plan import SchedulerOutput
from flexmesh.meshcore.request import Request, RequestStatus
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.meshcore.scheduler import Scheduler


def _sched(blocks: int = 64, budget: int = 64, seqs: int = 8, chunked: bool = True) -> Scheduler:
    # Batching alone: these prompts share tokens, which the prefix cache (on by default, and
    # tested in test_scheduler_prefix_cache.py) would reuse.
    cfg = EngineConfig(
        block_size_tokens=4,
        max_batched_tokens=budget,
        max_num_seqs=seqs,
        chunked_prefill=chunked,
        prefix_cache=False,
    )
    return Scheduler(cfg, blocks, max_model_len_tokens=1000)


def _req(rid: str, n: int, max_tokens: int = 8) -> Request:
    return Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=max_tokens))


def _step(s: Scheduler, token: int = 7, now: float = 0.0) -> SchedulerOutput:
    """Plan a step and answer every sampling chunk with `token`."""
    plan = s.schedule(now)
    sampled = {c.request_id: [token] for c in plan.chunks if c.samples}
    s.update_from_output(plan, sampled, now)
    return plan


def _check_statuses(s: Scheduler) -> None:
    """Status is the one truth: it names the one place each request is, and only a parked
    request has a deadline."""
    for r in s.requests.values():
        assert (r in s.waiting) == (r.status == RequestStatus.WAITING), r.request_id
        assert (r in s.running) == (r.status == RequestStatus.RUNNING), r.request_id
        assert (r.deadline is not None) == r.status.parked, r.request_id
    assert len(s.waiting) + len(s.running) + len(s.parked()) == len(s.requests)


def test_block_pool_refcounts() -> None:
    pool = BlockPool(4)
    a = pool.allocate(3)
    pool.share(a[:1])
    pool.free(a)
    assert pool.num_free == 3 and pool.ref_count(a[0]) == 1
    pool.free(a[:1])
    assert pool.num_free == 4
    with pytest.raises(ValueError, match="freed twice"):
        pool.free(a[:1])
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(5)


def test_chunked_prefill_respects_token_budget() -> None:
    s = _sched(budget=16)
    s.add(_req("a", 40))
    sizes = [c.num_tokens for c in _step(s).chunks]
    assert sizes == [16]
    assert s.requests["a"].num_computed_tokens == 16 and not s.requests["a"].output_token_ids
    _step(s)
    plan = _step(s)
    assert [c.num_tokens for c in plan.chunks] == [8] and plan.chunks[0].samples
    assert s.requests["a"].output_token_ids == [7]


def test_without_chunking_a_long_prompt_waits_for_budget() -> None:
    s = _sched(budget=16, chunked=False)
    s.add(_req("a", 40))
    assert _step(s).chunks == ()


def test_decode_and_new_prompt_share_a_step() -> None:
    s = _sched(budget=32)
    s.add(_req("a", 10))
    _step(s)
    s.add(_req("b", 12))
    plan = _step(s)
    assert [(c.request_id, c.num_tokens) for c in plan.chunks] == [("a", 1), ("b", 12)]


def test_preemption_frees_newest_and_recomputes() -> None:
    s = _sched(blocks=6)  # 24 token slots; each request grows to 14 tokens (4 blocks)
    a, b = _req("a", 8, max_tokens=6), _req("b", 8, max_tokens=6)
    s.add(a)
    s.add(b)
    _step(s)
    preempted: list[str] = []
    for _ in range(6):
        preempted += _step(s).preempted_ids
    assert preempted and preempted[0] == "b" and b.num_preemptions >= 1
    _check_statuses(s)  # a preempted request simply waits again
    while s.has_unfinished():
        _step(s)
    assert a.output_token_ids == b.output_token_ids == [7] * 6
    assert s.pool.num_free == 6


def test_finish_on_max_tokens_frees_blocks() -> None:
    s = _sched()
    s.add(_req("a", 5, max_tokens=3))
    for _ in range(3):
        _step(s)
    assert not s.has_unfinished() and s.pool.num_free == s.pool.num_blocks


def test_drafts_accepted_advance_computed_tokens() -> None:
    s = _sched()
    req = _req("a", 5, max_tokens=10)
    s.add(req)
    _step(s)  # prompt -> first token
    plan = s.schedule(0.0, {"a": [11, 12, 13]})
    (chunk,) = plan.chunks
    assert chunk.num_tokens == 4 and chunk.num_draft == 3 and chunk.samples
    assert chunk.token_ids == (7, 11, 12, 13) and chunk.draft_token_ids == (11, 12, 13)
    s.update_from_output(plan, {"a": [11, 12, 99]}, 0.0)  # two drafts accepted, then a new one
    assert req.output_token_ids == [7, 11, 12, 99]
    assert req.num_computed_tokens == req.num_tokens - 1
    assert (req.draft_tokens_proposed, req.draft_tokens_accepted) == (3, 2)


def test_abort_anywhere_frees_blocks() -> None:
    s = _sched(seqs=1)
    s.add(_req("a", 9))
    s.add(_req("b", 9))
    _step(s)
    assert s.abort("b") is not None and s.abort("a") is not None
    assert s.abort("a") is None
    assert s.pool.num_free == s.pool.num_blocks


def test_add_rejects_unservable_requests() -> None:
    s = _sched(blocks=2)
    with pytest.raises(InvalidRequestError, match="empty"):
        s.add(_req("a", 0))
    with pytest.raises(InvalidRequestError, match="KV cache"):
        s.add(_req("b", 20))
    s.add(_req("c", 3))
    with pytest.raises(InvalidRequestError, match="request_id"):
        s.add(_req("c", 3))


def test_request_outgrowing_the_whole_cache_ends_with_length() -> None:
    s = _sched(blocks=3)  # 12 token slots: KV for 12 tokens, the 13th needs none yet
    s.add(_req("a", 8, max_tokens=20))
    finished = []
    for _ in range(20):
        finished += _step(s).finished
    assert [r.request_id for r in finished] == ["a"]
    assert (
        finished[0].status == RequestStatus.FINISHED_LENGTH
        and len(finished[0].output_token_ids) == 5
    )
    assert not s.has_unfinished() and s.pool.num_free == 3


def test_queue_delay_counts_prefills_ahead_and_drains_to_zero() -> None:
    s = _sched(seqs=1)
    a, b = _req("a", 4), _req("b", 4)
    a.arrival_time = b.arrival_time = 100.0
    s.add(a)
    s.add(b)
    assert s.queue_delay_ms(now=100.5) == pytest.approx(500.0)  # both wait, oldest 0.5 s
    plan = s.schedule(100.5)  # a starts at 100.5 ...
    s.update_from_output(plan, {"a": [7]}, 100.8)  # ... and has its first token 300 ms later
    assert s.recent_prefill_ms == pytest.approx(0.2 * 300.0)
    assert s.num_awaiting_first_token == 1  # b still waits for its prefill
    assert s.queue_delay_ms(now=100.8) == pytest.approx(800.0)  # b's age beats 1 x 60 ms
    while s.has_unfinished():
        _step(s, now=101.0)
    assert s.queue_delay_ms(now=101.0) == 0.0  # idle: nothing ahead of a new request


# -- hand-off between workers ----------------------------------------------------------------


def test_hand_off_request_parks_with_its_kv_after_the_first_token() -> None:
    s = _sched()
    req = _req("a", 9)
    req.hand_off = True
    s.add(req)
    _step(s, now=1.0)
    s.update_from_output(SchedulerOutput(()), {}, 1.0)
    assert req.status == RequestStatus.KV_IN_FLIGHT and req.output_token_ids == [7]
    assert req.num_computed_tokens == 9 and len(req.block_ids) == 3
    assert s.num_blocks_in_flight == 3 and not s.has_unfinished()
    assert s.schedule(2.0).chunks == ()  # never scheduled again here
    assert s.finish("a", RequestStatus.FINISHED_STOPPED) is req
    assert s.pool.num_free == s.pool.num_blocks and not s.parked()


def test_hand_off_hold_expires_and_frees_blocks() -> None:
    s = _sched()
    req = _req("a", 5)
    req.hand_off = True
    s.add(req)
    plan = s.schedule(0.0)
    s.update_from_output(plan, {"a": [7]}, 0.0, hold_deadline=10.0)
    assert s.next_deadline() == 10.0
    assert s.expire(9.9) == ([], [])
    dropped, _ = s.expire(10.0)
    assert dropped == [req] and req.status == RequestStatus.FINISHED_ABORTED
    assert s.pool.num_free == s.pool.num_blocks and s.next_deadline() is None


def test_a_request_ending_on_its_first_token_is_not_handed_off() -> None:
    s = _sched()
    req = _req("a", 5, max_tokens=1)
    req.hand_off = True
    s.add(req)
    _step(s)
    assert req.status == RequestStatus.FINISHED_LENGTH and not s.parked()


def _imported(rid: str = "a", prompt: int = 8) -> Request:
    """A request as a decode worker receives it: its prompt and the prefill worker's token."""
    req = _req(rid, prompt)
    req.output_token_ids = [7]
    return req


@pytest.mark.parametrize("prompt", [7, 8, 9])  # 8 ends exactly on a block boundary
def test_imported_kv_makes_the_request_computed_up_to_its_prompt(prompt: int) -> None:
    s = _sched()
    req = _imported(prompt=prompt)
    assert s.reserve_for_kv(req, prompt, deadline=5.0)
    assert req.status == RequestStatus.WAITING_FOR_KV and len(req.block_ids) == -(-prompt // 4)
    assert not s.has_unfinished() and s.schedule(0.0).chunks == ()  # never early, no spin
    s.kv_arrived("a", prompt)
    plan = s.schedule(0.0)
    (chunk,) = plan.chunks
    assert (chunk.start, chunk.token_ids, chunk.samples) == (prompt, (7,), True)
    assert len(chunk.block_ids) == prompt // 4 + 1  # the first output token's slot is added
    s.update_from_output(plan, {"a": [8]}, 0.0)
    assert req.output_token_ids == [7, 8] and req.num_computed_tokens == prompt + 1


def test_failed_or_late_kv_recomputes_the_request() -> None:
    s = _sched()
    a, b = _imported("a"), _imported("b")
    assert s.reserve_for_kv(a, 8, deadline=5.0) and s.reserve_for_kv(b, 8, deadline=5.0)
    s.kv_failed("a")
    assert s.expire(5.0) == ([], ["b"])
    assert s.pool.num_free == s.pool.num_blocks
    plan = s.schedule(5.0)
    assert sorted((c.request_id, c.start, c.num_tokens) for c in plan.chunks) == [
        ("a", 0, 9),
        ("b", 0, 9),
    ]  # prompt and the first token are recomputed; the next token is sampled


def test_reserve_refuses_when_blocks_are_short_and_abort_frees_a_reservation() -> None:
    s = _sched(blocks=3)
    req = _imported("b", prompt=4)
    assert s.reserve_for_kv(req, 4, deadline=1.0) and s.num_blocks_in_flight == 1
    assert not s.reserve_for_kv(_imported("a", prompt=9), 9, deadline=1.0)  # 3 needed, 2 free
    assert list(s.requests) == ["b"] and s.pool.num_free == 2
    assert s.abort("b") is req and s.pool.num_free == 3 and not s.parked()
    assert req.status == RequestStatus.FINISHED_ABORTED and req.deadline is None


def test_prefill_budget_caps_prompt_tokens_per_step_but_not_decodes() -> None:
    s = _sched(budget=64)
    s.add(_req("d", 4, max_tokens=20))
    _step(s)  # "d" is decoding now
    s.add(_req("p", 40))
    assert s.set_prefill_budget(8) == 8
    plan = _step(s)
    sizes = {c.request_id: c.num_tokens for c in plan.chunks}
    assert sizes == {"d": 1, "p": 8}, "decode first, then a prefill chunk within its share"
    s.add(_req("q", 40))
    plan = _step(s)
    assert {c.request_id: c.num_tokens for c in plan.chunks} == {"d": 1, "p": 8}, (
        "the share is spent: the next prompt waits"
    )
    assert s.set_prefill_budget(10_000) == 64, "clamped to the step budget"
    plan = _step(s)
    assert sum(c.num_tokens for c in plan.chunks if c.request_id != "d") == 63


def test_a_tiny_prefill_budget_still_moves_one_prompt_per_step() -> None:
    s = _sched(budget=64)
    s.set_prefill_budget(1)
    s.add(_req("p", 12))
    sizes = [_step(s).num_batched_tokens for _ in range(3)]
    assert sizes == [4, 4, 4], "at least one block of one prompt each step"
    assert s.requests["p"].first_token_time is not None


def test_max_tokens_beyond_the_context_left_after_the_prompt_is_refused() -> None:
    s = _sched()
    with pytest.raises(InvalidRequestError, match="leaves 990 after the 10-token prompt") as err:
        s.add(_req("r", 10, max_tokens=991))
    assert err.value.field == "max_tokens" and not s.requests
    s.add(_req("ok", 10, max_tokens=990))


def test_parked_requests_are_found_by_status_and_expire_by_their_deadlines() -> None:
    s = _sched()
    held = _req("held", 5)
    held.hand_off = True
    s.add(held)
    s.update_from_output(s.schedule(0.0), {"held": [7]}, 0.0, hold_deadline=3.0)
    early, late = _imported("early"), _imported("late")
    assert s.reserve_for_kv(early, 8, deadline=2.0) and s.reserve_for_kv(late, 8, deadline=9.0)
    s.add(_req("queued", 4))
    _check_statuses(s)
    assert [r.request_id for r in s.parked()] == ["held", "early", "late"]
    assert s.next_deadline() == 2.0 and s.num_blocks_in_flight == 2 + 2 + 2
    with pytest.raises(KeyError):
        s.kv_arrived("held", 5)  # holds KV for another worker: it is not waiting for any
    s.kv_failed("held")  # likewise: nothing happens
    assert held.status == RequestStatus.KV_IN_FLIGHT
    assert s.expire(3.0) == ([held], ["early"])
    assert early.status == RequestStatus.WAITING and early.deadline is None
    _check_statuses(s)
    assert [r.request_id for r in s.parked()] == ["late"] and s.next_deadline() == 9.0
    s.kv_arrived("late", 8)
    _check_statuses(s)
    assert s.next_deadline() is None and s.num_blocks_in_flight == 0
