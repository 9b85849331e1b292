"""Cache-aware placement: prompt keys, the gateway's prefix index, the bounded pick, the pool's
choice and conditional disaggregation on uncached tokens, and the controller's balance lever."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flexmesh.meshcore.affinity import CHARS_PER_TOKEN, PrefixIndex, pick, prompt_keys
from flexmesh.meshcore.config import ControllerConfig
from flexmesh.meshcore.controller_policy import ControllerState, Snapshot, decide
from flexmesh.meshcore.errors import InvalidRequestError, PreconditionError
from flexmesh.meshcore.messages import WorkerStatus
from flexmesh.meshcore.pool import WorkerPool
from flexmesh.meshcore.prefix_cache import chain_hashes

BLOCK = 16


def test_keys_of_token_ids_are_the_engines_block_names() -> None:
    ids = list(range(100))
    assert prompt_keys("ignored", ids, BLOCK, "m") == chain_hashes(ids[:-1], BLOCK, "m")


def test_text_keys_share_exactly_the_shared_prefix() -> None:
    run = BLOCK * CHARS_PER_TOKEN
    system = "s" * (3 * run)
    a = prompt_keys(system + "question one?" * 20, (), BLOCK, "m")
    b = prompt_keys(system + "another one!" * 20, (), BLOCK, "m")
    assert a[:3] == b[:3] and a[3] != b[3]
    assert prompt_keys(system, (), BLOCK, "m") == a[:2]  # the last token's run is left out
    assert prompt_keys(system, (), BLOCK, "other") != a[:2]  # per model
    assert prompt_keys("short", (), BLOCK, "m") == []


def test_index_matches_leading_keys_and_evicts_the_least_recent() -> None:
    index = PrefixIndex()
    index.set_capacity("w", 4)
    index.add("w", ["a", "b", "c"])
    assert index.match("w", ["a", "b", "x"]) == 2
    assert index.match("other", ["a"]) == 0
    index.add("w", ["a", "d", "e"])  # "b" is now the least recent: it goes
    assert index.match("w", ["a", "b"]) == 1 and index.match("w", ["a", "d", "e"]) == 3
    index.forget("w")
    assert index.match("w", ["a"]) == 0


@given(
    loads=st.lists(st.integers(0, 20), min_size=1, max_size=6),
    hits=st.lists(st.integers(0, 10), min_size=6, max_size=6),
    balance=st.floats(1.0, 8.0),
)
def test_pick_never_exceeds_the_bound_and_prefers_hits(
    loads: list[int], hits: list[int], balance: float
) -> None:
    idx = list(range(len(loads)))
    chosen = pick(idx, lambda i: loads[i], lambda i: hits[i], balance)
    least = min(loads)
    assert loads[chosen] <= balance * (least + 1)
    eligible = [i for i in idx if loads[i] <= balance * (least + 1)]
    assert hits[chosen] == max(hits[i] for i in eligible)


def _pool(*roles: str, balance: float = 2.0) -> WorkerPool:
    return WorkerPool(((f"w{i}", "m", r) for i, r in enumerate(roles)), PrefixIndex(), balance)


def _keys(group: int, n: int = 24) -> list[bytes]:
    return chain_hashes([group] * (n * BLOCK + 1), BLOCK, "m")[:n]


def test_a_prefix_follows_the_worker_that_holds_it_until_load_wins() -> None:
    pool = _pool("mixed", "mixed")
    first = pool.place("m", 448, 128, _keys(1), BLOCK)
    assert first.prefill is None and first.hit_blocks == 0
    holder = first.decode.name
    holder_entry = pool.entries[holder]
    holder_entry.prefilling = 1  # the first request is still running there
    again = pool.place("m", 448, 128, _keys(1), BLOCK)
    assert (again.decode.name, again.prefill, again.hit_blocks) == (holder, None, 24)
    other = pool.place("m", 448, 128, _keys(2), BLOCK)
    assert other.decode.name != holder  # a new prefix goes to the less loaded worker
    holder_entry.prefilling = 3  # past 2 x (least load 0 + 1): load wins over the hit
    moved = pool.place("m", 448, 128, _keys(1), BLOCK)
    assert moved.prefill is None and moved.decode.name != holder and moved.hit_blocks == 0


def test_disaggregation_counts_uncached_tokens() -> None:
    pool = _pool("prefill", "decode")
    cold = pool.place("m", 448, 128, _keys(1), BLOCK)
    assert cold.prefill is not None and cold.prefill.name == "w0"
    # Both hold the prefix now (the decode worker caches what it imported): 64 tokens left.
    warm = pool.place("m", 448, 128, _keys(1), BLOCK)
    assert (warm.prefill, warm.decode.name, warm.hit_blocks) == (None, "w1", 24)
    # Without the cache-aware index the same prompt is split again.
    plain = WorkerPool([("w0", "m", "prefill"), ("w1", "m", "decode")])
    assert plain.place("m", 448, 128, _keys(1), BLOCK).prefill is not None


def test_a_dead_worker_comes_back_with_nothing_cached() -> None:
    pool = _pool("mixed", "mixed")
    holder = pool.place("m", 448, 128, _keys(1), BLOCK).decode.name
    assert pool.index is not None and pool.index.match(holder, _keys(1)) == 24
    pool.set_alive(holder, False)
    pool.set_alive(holder, True)
    assert pool.index.match(holder, _keys(1)) == 0


def test_balance_changes_are_checked() -> None:
    pool = _pool("mixed", "mixed")
    assert pool.set_balance("m", 1.0) == 1.0
    with pytest.raises(InvalidRequestError):
        pool.set_balance("m", 0.5)
    with pytest.raises(PreconditionError):
        WorkerPool([("w0", "m", "mixed")]).set_balance("m", 2.0)


def _status(name: str, waiting: int) -> WorkerStatus:
    return WorkerStatus(
        name, "m", "", "mixed", "cpu", 0, 0, 0, 64, 1.0, 0,
        prefill_tokens_waiting=waiting, step_ms=50.0, decode_step_ms=50.0,
        prefill_ms_per_token=1.0, max_batched_tokens=512,
    )  # fmt: skip


def test_the_balance_lever_halves_under_imbalance_and_returns_when_safe() -> None:
    cfg = ControllerConfig(enabled=True, ttft_slo_ms=1000.0, min_dwell_ms=5000.0)
    skewed = (_status("w0", 4000), _status("w1", 0))
    snap = Snapshot(1.0, skewed, balance={"m": 4.0}, base_balance=4.0)
    actions, state = decide(snap, ControllerState(), cfg)
    balance = [a for a in actions if a.kind == "balance"]
    assert [(a.target, a.old, a.new, a.reason) for a in balance] == [
        ("m", 4.0, 2.0, "prefill_imbalance")
    ]
    calm = (_status("w0", 0), _status("w1", 0))
    early = Snapshot(2.0, calm, balance={"m": 2.0}, base_balance=4.0)
    assert not [a for a in decide(early, state, cfg)[0] if a.kind == "balance"]  # dwell
    later = Snapshot(7.0, calm, balance={"m": 2.0}, base_balance=4.0)
    back = [a for a in decide(later, state, cfg)[0] if a.kind == "balance"]
    assert [(a.old, a.new, a.reason) for a in back] == [(2.0, 4.0, "prefill_balanced")]
    off = ControllerConfig(enabled=True, ttft_slo_ms=1000.0, levers=("budget", "role"))
    assert not [a for a in decide(snap, ControllerState(), off)[0] if a.kind == "balance"]
    pins = frozenset({"placement_balance.m"})  # the operator's bound
    pinned = Snapshot(1.0, skewed, balance={"m": 4.0}, policy_pins=pins)
    assert not [a for a in decide(pinned, ControllerState(), cfg)[0] if a.kind == "balance"]
    no_index = Snapshot(1.0, skewed)  # least-loaded placement: no bound to turn
    assert not [a for a in decide(no_index, ControllerState(), cfg)[0] if a.kind == "balance"]
