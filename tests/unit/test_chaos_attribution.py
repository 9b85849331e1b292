"""Which requests a kill affected (`flexmesh bench chaos`): in flight at the kill, or sent
before the mesh served again; a worker kill leaves the other model's completed requests out."""

from __future__ import annotations

from flexmesh.bench.chaos_bench import Kill, _affected
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
