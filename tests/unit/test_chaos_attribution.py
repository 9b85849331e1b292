"""Which requests a kill affected (`flexmesh bench chaos`): in flight at the kill, or sent
before the mesh served again; a worker kill leaves the other model's completed requests out.
Whose tokens are checked: every request that completed after the first kill."""

from __future__ import annotations

from flexmesh.bench.chaos_bench import Kill, _affected, _completed_after_kill
from flexmesh.loadgen.records import RequestRecord


def _rec(i: int, send: float, end: float, status: str = "OK", model: str = "L") -> RequestRecord:
    return RequestRecord(i, f"r{i}", "chat", send, status, send_s=send, end_s=end,
                         route_model=model)  # fmt: skip


def test_in_flight_and_outage_requests_are_affected_and_others_not() -> None:
    records = [
        _rec(0, 0.0, 4.0),  # done before the kill
        _rec(1, 4.0, 12.0),  # in flight at the kill
        _rec(2, 11.0, 11.5, "UNAVAILABLE"),  # sent during the outage
        _rec(3, 13.0, 14.0),  # sent after the mesh served again
        _rec(4, 9.0, 12.0, model="S"),  # in flight, on the other model, completed
        _rec(5, 9.0, 10.5, "UNAVAILABLE", model=""),  # failed: its model is unknown
    ]
    kills = [Kill("worker-L-1", at_s=10.0, served_again_s=2.0)]
    assert _affected(records, kills, "decode", "L") == {1: 10.0, 2: 10.0, 5: 10.0}
    assert set(_affected(records, kills, "gateway", "L")) == {1, 2, 4, 5}


def test_every_request_completed_after_the_first_kill_is_checked_not_only_the_affected() -> None:
    records = [
        _rec(0, 0.0, 4.0),  # done before the first kill: not checked
        _rec(1, 4.0, 12.0),  # affected, completed
        _rec(2, 11.0, 11.5, "UNAVAILABLE"),  # affected, failed: nothing to check
        _rec(3, 13.0, 14.0),  # after the mesh served again: not affected, checked
        _rec(4, 9.0, 12.0, model="S"),  # the other model's, completed after the kill: checked
        _rec(5, 21.0, 25.0),  # around the second kill
    ]
    kills = [Kill("worker-L-1", at_s=10.0, served_again_s=2.0), Kill("worker-L-1", 22.0, 1.0)]
    assert set(_affected(records, kills, "decode", "L")) == {1, 2, 5}
    assert [r.index for r in _completed_after_kill(records, kills)] == [1, 3, 4, 5]
    assert _completed_after_kill(records, []) == []
