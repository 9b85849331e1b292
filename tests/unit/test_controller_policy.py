"""The controller's policies on synthetic telemetry sequences (no mesh)."""

from __future__ import annotations

import itertools
from dataclasses import replace

from flexmesh.meshcore.config import ControllerConfig
from flexmesh.meshcore.controller_policy import (
    Action,
    ControllerState,
    Snapshot,
    decide,
    policy_changes,
    ttft_ms,
)
from flexmesh.meshcore.messages import WorkerStatus
from flexmesh.meshcore.pool import DECODE_ROLES, PREFILL_ROLES
from flexmesh.meshcore.routing import RoutingConfig, apply_update
from flexmesh.meshcore.traffic import ModelTraffic, Traffic, TrafficWindow

CFG = ControllerConfig(
    ttft_slo_ms=1000.0, tpot_slo_ms=100.0, min_dwell_ms=5000.0, budget_dwell_ms=1000.0
)
MAX_BUDGET = 512


def _w(
    name: str,
    role: str,
    queue_ms: float = 0.0,
    tpot_ms: float = 0.0,
    batch: int = 0,
    model: str = "m",
    **kw: object,
) -> WorkerStatus:
    return WorkerStatus(
        name, model, "", role, "cpu", 0, batch, 0, 100, 1.0, 0,
        queue_delay_ms=queue_ms, tpot_ms=tpot_ms, decode_batch=batch,
        max_batched_tokens=MAX_BUDGET, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


class Mesh:
    """Roles and budgets as the workers hold them; each round the actions are applied."""

    def __init__(self, roles: dict[str, str]) -> None:
        self.roles = roles
        self.budgets = dict.fromkeys(roles, MAX_BUDGET)
        self.state = ControllerState()
        self.log: list[Action] = []

    def round(
        self, t_s: float, queue_ms: float, tpot_ms: float, pins: frozenset[str] = frozenset()
    ) -> list[Action]:
        workers = tuple(
            _w(n, r, queue_ms if r in PREFILL_ROLES else 0.0, tpot_ms if r in DECODE_ROLES else 0.0,
               batch=2 if r in DECODE_ROLES else 0, pinned=n in pins,
               prefill_budget_tokens=self.budgets[n])
            for n, r in self.roles.items()
        )  # fmt: skip
        actions, self.state = decide(Snapshot(t_s, workers), self.state, CFG)
        for a in actions:
            if a.kind == "role":
                self.roles[a.target] = str(a.new)
            else:
                assert a.kind == "prefill_budget"
                self.budgets[a.target] = int(a.new)
        self.log += actions
        roles = list(self.roles.values())
        assert any(r in PREFILL_ROLES for r in roles) and any(r in DECODE_ROLES for r in roles)
        return actions

    def of(self, kind: str) -> list[Action]:
        return [a for a in self.log if a.kind == kind]


def test_a_prefill_burst_adds_prefill_capacity_and_a_decode_backlog_takes_it_back() -> None:
    mesh = Mesh({"p": "prefill", "d": "decode"})
    (a,) = mesh.round(0.0, queue_ms=2500.0, tpot_ms=20.0)
    assert (a.kind, a.target, a.new, a.reason) == ("role", "d", "mixed", "ttft_at_risk")
    assert a.inputs["queue_delay_ms"] == 2500.0
    assert mesh.of("role") == [a] and mesh.round(1.0, queue_ms=2500.0, tpot_ms=20.0) == []
    # The decode backlog: co-location's lever first (d's prefill share halves to the floor),
    # then, TPOT still at risk, disaggregation's (d back to decode-only).
    for t in range(10, 30):
        mesh.round(float(t), queue_ms=100.0, tpot_ms=150.0)
    shares = [int(x.new) for x in mesh.of("prefill_budget")]
    assert shares == [256, 128, 64, 32]
    b = mesh.of("role")[-1]
    assert (b.target, b.new, b.reason) == ("d", "decode", "tpot_at_risk")
    assert mesh.log.index(b) > mesh.log.index(mesh.of("prefill_budget")[-1])
    # A budget waiting out its dwell still counts as the lever in use: no role change meanwhile.
    mesh = Mesh({"a": "mixed", "b": "mixed"})
    for t in (0.0, 0.5, 0.7):
        mesh.round(t, queue_ms=0.0, tpot_ms=500.0)
    assert mesh.of("role") == [] and len(mesh.of("prefill_budget")) == 2


def test_a_decode_worker_without_tpot_headroom_is_not_made_mixed() -> None:
    busy = _w("d", "decode", tpot_ms=95.0, batch=4)
    snap = Snapshot(0.0, (_w("p", "prefill", queue_ms=5000.0), busy))
    assert decide(snap, ControllerState(), CFG)[0] == []
    roomy = replace(busy, tpot_ms=30.0)
    snap = Snapshot(0.0, (_w("p", "prefill", queue_ms=5000.0), roomy))
    assert [a.new for a in decide(snap, ControllerState(), CFG)[0]] == ["mixed"]


def test_a_mixed_workers_prefill_share_shrinks_for_tpot_and_grows_for_ttft() -> None:
    mesh = Mesh({"a": "mixed"})  # one worker: no role can change, only its budget
    for i in range(8):
        mesh.round(float(i), queue_ms=100.0, tpot_ms=150.0)
    shares = [int(a.new) for a in mesh.of("prefill_budget")]
    assert shares == [256, 128, 64, 32], "halved each round down to the floor, decode-first"
    assert all(a.reason == "tpot_at_risk" for a in mesh.log)
    mesh.round(10.0, queue_ms=900.0, tpot_ms=90.0)  # both at risk: overloaded, hold
    assert mesh.budgets["a"] == 32
    for i in range(8):
        mesh.round(20.0 + i, queue_ms=900.0, tpot_ms=20.0)
    assert mesh.budgets["a"] == MAX_BUDGET, "doubled back to the whole step, prefill-first"
    n = len(mesh.log)
    mesh.round(30.0, queue_ms=100.0, tpot_ms=150.0)
    mesh.round(30.5, queue_ms=100.0, tpot_ms=150.0)
    assert len(mesh.log) == n + 1, "one change per budget_dwell_ms"


def test_noise_around_a_threshold_causes_no_flapping() -> None:
    mesh = Mesh({"a": "mixed", "b": "mixed"})
    for i in range(40):  # TTFT hovering between safe and at risk, TPOT at risk
        mesh.round(i * 1.0, queue_ms=600.0 + (i % 3) * 150.0, tpot_ms=120.0)
    assert mesh.of("role") == []  # TTFT never safe: no decode-only worker is made
    for i in range(40):  # TPOT hovering around its threshold, TTFT safe
        mesh.round(100.0 + i, queue_ms=100.0, tpot_ms=75.0 + (i % 2) * 10.0)
    assert len(mesh.of("role")) <= 1
    roles = len(mesh.of("role"))
    for i in range(40):  # both near their thresholds, neither decisively
        mesh.round(200.0 + i, queue_ms=700.0 + (i % 2) * 200.0, tpot_ms=70.0 + (i % 2) * 20.0)
    assert len(mesh.of("role")) - roles <= 40 * 1.0 / (CFG.min_dwell_ms / 1000.0) / 2 + 1
    # A budget only ever moves one way while the other signal is not safe: no see-saw.
    for worker in "ab":
        steps = [int(a.new) - int(a.old) for a in mesh.of("prefill_budget") if a.target == worker]
        turns = sum(1 for x, y in itertools.pairwise(steps) if (x > 0) != (y > 0))
        assert turns <= 1, steps


def test_pins_win_and_the_invariant_always_holds() -> None:
    mesh = Mesh({"p": "prefill", "d": "decode"})
    assert mesh.round(0.0, queue_ms=5000.0, tpot_ms=0.0, pins=frozenset({"d"})) == []
    mesh = Mesh({"a": "mixed", "b": "mixed"})
    for t in range(10):
        mesh.round(float(t), queue_ms=0.0, tpot_ms=500.0, pins=frozenset({"b"}))
    assert [(a.target, a.new) for a in mesh.of("role")] == [("a", "decode")]
    # The other one is the last prefill-capable worker: it stays mixed however bad TPOT gets,
    # and being pinned, its budget is left alone too.
    for i in range(1, 10):
        mesh.round(10.0 + 10.0 * i, queue_ms=0.0, tpot_ms=500.0, pins=frozenset({"b"}))
    assert sorted(mesh.roles.values()) == ["decode", "mixed"]
    assert mesh.budgets["b"] == MAX_BUDGET and len(mesh.of("role")) == 1


def test_dead_workers_and_single_worker_models_keep_their_roles() -> None:
    dead = replace(_w("d", "decode"), alive=False)
    snap = Snapshot(0.0, (_w("p", "prefill", queue_ms=9000.0), dead))
    assert decide(snap, ControllerState(), CFG)[0] == []
    snap = Snapshot(0.0, (_w("solo", "mixed", queue_ms=9000.0),))
    assert [a.kind for a in decide(snap, ControllerState(), CFG)[0]] == []  # budget already max


# -- routing ---------------------------------------------------------------------------------

BASE = RoutingConfig()


class Router:
    """A live policy the routing lever's actions are applied to, version by version."""

    def __init__(self, pins: frozenset[str] = frozenset()) -> None:
        self.policy, self.pins = BASE, pins
        self.state = ControllerState()

    def round(
        self,
        t_s: float,
        large_ok: float,
        small_ok: float = 1.0,
        large_batch: int = 1,
        acceptance: dict[str, float] | None = None,
    ) -> list[Action]:
        workers = (
            _w("L", "mixed", batch=large_batch, model=BASE.large_model,
               draft_acceptance=acceptance or {}),
            _w("S", "mixed", model=BASE.small_model),
        )  # fmt: skip
        models = {BASE.large_model: large_ok, BASE.small_model: small_ok}
        traffic = Traffic(30.0, {}, {m: ModelTraffic(20, ok) for m, ok in models.items()})
        snap = Snapshot(t_s, workers, self.policy, BASE, self.pins, traffic)
        actions, self.state = decide(snap, self.state, CFG)
        changes = policy_changes(actions)
        if changes:
            self.policy = apply_update(self.policy, changes, self.policy.version)
        return [a for a in actions if a.kind == "policy"]


def test_an_overloaded_large_model_spills_sooner_and_takes_fewer_unsure_prompts() -> None:
    r = Router()
    for i in range(6):
        r.round(10.0 * i, large_ok=0.5)
    assert r.policy.spill_queue_ms == CFG.min_spill_queue_ms
    assert r.policy.return_queue_ms < r.policy.spill_queue_ms
    assert r.policy.confidence_threshold < BASE.confidence_threshold
    for i in range(10):
        r.round(100.0 + 10.0 * i, large_ok=1.0)
    assert r.policy.spill_queue_ms == BASE.spill_queue_ms
    assert r.policy.return_queue_ms == BASE.return_queue_ms
    assert r.policy.confidence_threshold == BASE.confidence_threshold
    assert r.round(300.0, large_ok=1.0) == [], "relaxed at the configured policy: nothing moves"


def test_routing_thresholds_move_at_most_once_per_dwell_and_pins_win() -> None:
    r = Router()
    for i in range(50):  # attainment flickering around the target every second
        r.round(float(i), large_ok=0.85 + (i % 2) * 0.1)
    spill_moves = r.policy.version - 1
    assert spill_moves <= 50 / (CFG.min_dwell_ms / 1000.0) + 1
    pinned = Router(frozenset({"spill_queue_ms", "routes.math"}))
    for i in range(4):
        pinned.round(10.0 * i, large_ok=0.2, large_batch=20)
    assert pinned.policy.spill_queue_ms == BASE.spill_queue_ms
    assert pinned.policy.routes.math == BASE.routes.math
    assert pinned.policy.routes.knowledge_qa.strategy == "none"  # not pinned: switched off


def test_drafting_is_switched_off_when_it_does_not_pay_and_back_on_when_it_may() -> None:
    r = Router()
    off = r.round(0.0, large_ok=1.0, large_batch=12)
    assert {a.target for a in off} >= {"routes.math.strategy", "routes.knowledge_qa.strategy"}
    assert all(a.new == "none" and a.reason == "large_batch" for a in off)
    assert r.policy.routes.code.strategy == "pld", "the small model's routes are not affected"
    assert r.round(1.0, large_ok=1.0, large_batch=2) == [], "dwell first"
    on = r.round(10.0, large_ok=1.0, large_batch=2)
    assert {a.new for a in on} == {"spec"} and r.policy.routes == BASE.routes
    low = r.round(20.0, large_ok=1.0, large_batch=2, acceptance={"spec": 0.1})
    assert {(a.new, a.reason) for a in low} == {("none", "low_acceptance")}


def test_traffic_window_counts_arrivals_and_slo_attainment_within_the_window() -> None:
    w = TrafficWindow(window_s=10.0)
    for t in range(20):
        w.arrived(float(t), "code" if t % 2 else "chat")
        w.ended(float(t), "big", met_slo=t % 4 != 0)
    s = w.summary(19.5)
    assert s.arrivals_per_s == {"chat": 0.5, "code": 0.5}  # t = 10..19
    assert s.models["big"].requests == 10
    assert s.models["big"].slo_attainment == 0.8  # t = 12, 16 missed


def test_prompts_crawling_through_a_small_share_put_ttft_at_risk() -> None:
    # Nothing queued (every prompt admitted), but 4,000 prompt tokens at 32 a 100-ms step
    # would take 12.5 s: TTFT is at risk, so the share grows instead of shrinking for TPOT.
    w = _w("a", "mixed", tpot_ms=95.0, batch=4, prefill_tokens_waiting=4000, step_ms=100.0,
           prefill_budget_tokens=32)  # fmt: skip
    assert ttft_ms(w) == 12_500.0
    assert decide(Snapshot(0.0, (w,)), ControllerState(), CFG)[0] == []  # both at risk: hold
    calm = replace(w, tpot_ms=20.0)
    (a,) = decide(Snapshot(0.0, (calm,)), ControllerState(), CFG)[0]
    assert (a.kind, a.new, a.reason) == ("prefill_budget", 64, "ttft_at_risk")
