"""The controller's prefill/decode policy on synthetic telemetry sequences (no mesh)."""

from __future__ import annotations

from dataclasses import replace

from flexmesh.meshcore.config import ControllerConfig
from flexmesh.meshcore.controller import PDState, RoleChange, Snapshot, decide
from flexmesh.meshcore.messages import WorkerStatus
from flexmesh.meshcore.pool import DECODE_ROLES, PREFILL_ROLES

CFG = ControllerConfig(ttft_slo_ms=1000.0, tpot_slo_ms=100.0, min_dwell_ms=5000.0)


def _w(
    name: str, role: str, queue_ms: float = 0.0, tpot_ms: float = 0.0, batch: int = 0
) -> WorkerStatus:
    return WorkerStatus(
        name, "m", "", role, "cpu", 0, batch, 0, 100, 1.0, 0,
        queue_delay_ms=queue_ms, tpot_ms=tpot_ms, decode_batch=batch,
    )  # fmt: skip


class Mesh:
    """Roles as the gateway holds them; each round the policy's actions are applied."""

    def __init__(self, roles: dict[str, str]) -> None:
        self.roles = roles
        self.state = PDState()
        self.log: list[RoleChange] = []

    def round(
        self, t_s: float, queue_ms: float, tpot_ms: float, pins: frozenset[str] = frozenset()
    ) -> list[RoleChange]:
        workers = tuple(
            _w(n, r, queue_ms if r in PREFILL_ROLES else 0.0, tpot_ms if r in DECODE_ROLES else 0.0,
               batch=2 if r in DECODE_ROLES else 0)
            for n, r in self.roles.items()
        )  # fmt: skip
        actions, self.state = decide(Snapshot(t_s, workers), self.state, pins, CFG)
        for a in actions:
            self.roles[a.worker] = a.new
        self.log += actions
        roles = list(self.roles.values())
        assert any(r in PREFILL_ROLES for r in roles) and any(r in DECODE_ROLES for r in roles)
        return actions


def test_a_prefill_burst_adds_prefill_capacity_and_a_decode_backlog_takes_it_back() -> None:
    mesh = Mesh({"p": "prefill", "d": "decode"})
    (a,) = mesh.round(0.0, queue_ms=2500.0, tpot_ms=20.0)
    assert (a.worker, a.new, a.reason) == ("d", "mixed", "ttft_at_risk")
    assert a.inputs["queue_delay_ms"] == 2500.0
    assert mesh.round(1.0, queue_ms=2500.0, tpot_ms=20.0) == []  # dwell
    (b,) = mesh.round(10.0, queue_ms=100.0, tpot_ms=150.0)
    assert (b.worker, b.new, b.reason) == ("d", "decode", "tpot_at_risk")


def test_noise_around_a_threshold_causes_no_flapping() -> None:
    mesh = Mesh({"a": "mixed", "b": "mixed"})
    for i in range(40):  # TTFT hovering between safe and at risk, TPOT at risk
        mesh.round(i * 1.0, queue_ms=600.0 + (i % 3) * 150.0, tpot_ms=120.0)
    assert mesh.log == []  # TTFT never safe: no decode-only worker is made
    for i in range(40):  # TPOT hovering around its threshold, TTFT safe
        mesh.round(100.0 + i, queue_ms=100.0, tpot_ms=75.0 + (i % 2) * 10.0)
    assert len(mesh.log) <= 1
    changes = len(mesh.log)
    for i in range(40):  # both near their thresholds, neither decisively
        mesh.round(200.0 + i, queue_ms=700.0 + (i % 2) * 200.0, tpot_ms=70.0 + (i % 2) * 20.0)
    flips = len(mesh.log) - changes
    assert flips <= 40 * 1.0 / (CFG.min_dwell_ms / 1000.0) / 2 + 1


def test_pins_win_and_the_invariant_always_holds() -> None:
    mesh = Mesh({"p": "prefill", "d": "decode"})
    assert mesh.round(0.0, queue_ms=5000.0, tpot_ms=0.0, pins=frozenset({"d"})) == []
    mesh = Mesh({"a": "mixed", "b": "mixed"})
    (a,) = mesh.round(0.0, queue_ms=0.0, tpot_ms=500.0)
    assert a.new == "decode"
    # The other one is the last prefill-capable worker: it stays mixed however bad TPOT gets.
    for i in range(1, 10):
        assert mesh.round(10.0 * i, queue_ms=0.0, tpot_ms=500.0) == []
    assert sorted(mesh.roles.values()) == ["decode", "mixed"]


def test_dead_workers_and_single_worker_models_are_left_alone() -> None:
    dead = replace(_w("d", "decode"), alive=False)
    snap = Snapshot(0.0, (_w("p", "prefill", queue_ms=9000.0), dead))
    assert decide(snap, PDState(), frozenset(), CFG)[0] == []
    snap = Snapshot(0.0, (_w("solo", "mixed", queue_ms=9000.0),))
    assert decide(snap, PDState(), frozenset(), CFG)[0] == []
