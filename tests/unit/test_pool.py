"""The gateway's worker pool: role-aware placement, conditional disaggregation, safe changes."""

from __future__ import annotations

import pytest

from flexmesh.meshcore.errors import InvalidRequestError, PreconditionError, WorkerUnavailableError
from flexmesh.meshcore.pool import WorkerPool


def _pool(*roles: str) -> WorkerPool:
    return WorkerPool((f"w{i}", "m", r) for i, r in enumerate(roles))


def test_prefill_and_decode_workers_split_a_long_prompt() -> None:
    pool = _pool("prefill", "decode")
    p = pool.place("m", prompt_tokens=500, min_prompt_tokens=128)
    assert p.prefill is not None and (p.prefill.name, p.decode.name) == ("w0", "w1")
    assert p.prefill.rank == 0 and p.decode.rank == 1


def test_short_prompts_and_mixed_workers_stay_local() -> None:
    pool = _pool("prefill", "decode")
    assert pool.place("m", 20, 128).prefill is None  # conditional disaggregation
    mixed = _pool("mixed", "mixed")
    for _ in range(4):
        p = mixed.place("m", 500, 128)
        assert p.prefill is None  # the least-loaded worker of both kinds is the same one


def test_least_loaded_workers_are_chosen() -> None:
    pool = _pool("mixed", "mixed", "decode")
    pool.entries["w0"].prefilling = 3
    pool.entries["w2"].decoding = 5
    p = pool.place("m", 500, 0)
    assert p.prefill is None and p.decode.name == "w1"  # least loaded both ways: local
    pool.entries["w1"].decoding = 9
    p = pool.place("m", 500, 0)
    assert p.prefill is not None and (p.prefill.name, p.decode.name) == ("w1", "w0")


def test_roles_change_at_run_time_and_drained_workers_take_nothing() -> None:
    pool = _pool("mixed", "mixed")
    pool.set_role("w0", "prefill")
    pool.set_role("w1", "decode")
    p = pool.place("m", 500, 0)
    assert p.prefill is not None and (p.prefill.name, p.decode.name) == ("w0", "w1")
    pool.set_role("w0", "mixed")
    pool.set_draining("w1", True)
    assert pool.place("m", 500, 0).decode.name == "w0"
    pool.set_draining("w1", False)
    pool.entries["w0"].decoding = 2
    p = pool.place("m", 500, 0)
    assert p.prefill is not None and (p.prefill.name, p.decode.name) == ("w0", "w1")


def test_changes_that_leave_a_model_without_prefill_or_decode_are_refused() -> None:
    pool = _pool("prefill", "decode")
    with pytest.raises(PreconditionError, match="no decode-capable"):
        pool.set_role("w1", "prefill")
    with pytest.raises(PreconditionError, match="no prefill-capable"):
        pool.set_draining("w0", True)
    with pytest.raises(InvalidRequestError, match="role"):
        pool.set_role("w0", "cook")
    assert [e.role for e in pool.entries.values()] == ["prefill", "decode"]
    assert not any(e.draining for e in pool.entries.values())


def test_dead_workers_take_nothing_until_they_report_again() -> None:
    pool = _pool("mixed", "mixed")
    assert pool.set_alive("w0", False) and not pool.set_alive("w0", False)
    assert {pool.place("m", 500, 0).decode.name for _ in range(4)} == {"w1"}
    assert pool.set_alive("w0", True)
    assert {pool.place("m", 500, 0).decode.name for _ in range(4)} == {"w0", "w1"}


def test_a_pool_that_lost_every_worker_of_one_kind_serves_on_the_other() -> None:
    pool = _pool("prefill", "decode")
    pool.set_alive("w1", False)
    p = pool.place("m", 500, 0)
    assert p.prefill is None and p.decode.name == "w0"  # degraded: the prefill worker decodes
    pool.set_alive("w0", False)
    with pytest.raises(WorkerUnavailableError, match="no live worker"):
        pool.place("m", 500, 0)


def test_rescue_prefers_a_live_decoder_and_excludes_the_broken() -> None:
    pool = _pool("prefill", "decode", "decode", "mixed")
    pool.entries["w2"].decoding = 4
    assert pool.rescue("m", {"w1"}).name == "w3"  # decode-capable, least busy
    assert pool.rescue("m", {"w1", "w2", "w3"}).name == "w0"  # any role rather than none
    pool.set_alive("w0", False)
    with pytest.raises(WorkerUnavailableError, match="no live worker left"):
        pool.rescue("m", {"w1", "w2", "w3"})
