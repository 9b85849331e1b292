"""The controller's policies on synthetic telemetry sequences (no mesh)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from flexmesh.meshcore.config import ControllerConfig
from flexmesh.meshcore.controller_policy import (
    Action,
    ControllerState,
    Snapshot,
    budget_band,
    decide,
    policy_changes,
    ttft_ms,
)
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.meshcore.messages import WorkerStatus
from flexmesh.meshcore.pool import DECODE_ROLES, PREFILL_ROLES
from flexmesh.meshcore.routing import INTENTS, ROUTE_KEYS, ProbeResult, RoutingConfig, apply_update
from flexmesh.meshcore.routing import Router as RoutingRouter
from flexmesh.meshcore.traffic import Arrival, ModelTraffic, Traffic, TrafficWindow

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
        self.timed: list[tuple[float, Action]] = []

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
        self.timed += [(t_s, a) for a in actions if a.kind == "prefill_budget"]
        roles = list(self.roles.values())
        assert any(r in PREFILL_ROLES for r in roles) and any(r in DECODE_ROLES for r in roles)
        return actions

    def of(self, kind: str) -> list[Action]:
        return [a for a in self.log if a.kind == kind]


def _costed(name: str = "a", role: str = "mixed", model: str = "m", **kw: object) -> WorkerStatus:
    """A worker reporting its step costs: 30 ms for its decode batch of 8 and 0.2 ms a prompt
    token (a whole 512-token share: 132 ms a step, TPOT at risk)."""
    fields: dict[str, object] = {
        "batch": 8, "decode_step_ms": 30.0, "prefill_ms_per_token": 0.2, "step_ms": 30.0,
        "tpot_ms": 30.0, "prefill_budget_tokens": MAX_BUDGET, **kw,
    }  # fmt: skip
    return _w(name, role, model=model, **fields)


def test_a_burst_is_answered_in_the_round_that_sees_it() -> None:
    quiet = _costed()
    assert decide(Snapshot(0.0, (quiet,)), ControllerState(), CFG)[0] == [
        *decide(Snapshot(0.0, (quiet,)), ControllerState(), CFG)[0]
    ]
    state = ControllerState()
    # Decodes running, nothing to prefill: the share is already set so a burst cannot break
    # TPOT (largest power of two with a predicted step under 65 ms: (65 - 30) / 0.2 = 175).
    (guard,), state = decide(Snapshot(0.0, (quiet,)), state, CFG)
    assert (guard.new, guard.reason) == (128, "tpot_guard")
    # Nothing decodes: the whole step for prompts (after the reversal's dwell).
    idle = replace(quiet, decode_batch=0, prefill_budget_tokens=128)
    assert decide(Snapshot(0.5, (idle,)), state, CFG)[0] == []
    (up,), state = decide(Snapshot(2.0, (idle,)), state, CFG)
    assert (up.new, up.reason) == (MAX_BUDGET, "relax")
    # 1,000 prompt tokens arrive beside 8 decodes: the round that sees them sets the share,
    # its moving averages (tpot_ms 30) still calm.
    burst = replace(quiet, prefill_tokens_waiting=1000)
    (a,), state = decide(Snapshot(2.1, (burst,)), state, CFG)
    assert (a.kind, a.old, a.new, a.reason) == ("prefill_budget", MAX_BUDGET, 128, "tpot_at_risk")
    assert a.inputs["tpot_ms"] == 30.0 + 0.2 * MAX_BUDGET and a.inputs["predicted_tpot_ms"] < 65
    assert a.inputs["predicted_ttft_ms"] < 0.8 * CFG.ttft_slo_ms  # the share still drains them


def test_alternating_bursts_do_not_flap() -> None:
    cfg = replace(CFG, budget_dwell_ms=3000.0)

    def run(batch: Callable[[int], int]) -> list[tuple[float, int, int, str]]:
        state, budget, log = ControllerState(), MAX_BUDGET, []
        for i in range(60):  # a burst every other 0.5-s round
            w = _costed(prefill_tokens_waiting=1500 if i % 2 else 0, batch=batch(i),
                        prefill_budget_tokens=budget)  # fmt: skip
            actions, state = decide(Snapshot(i * 0.5, (w,)), state, cfg)
            for a in actions:
                budget = int(a.new)
                log.append((i * 0.5, int(a.old), int(a.new), a.reason))
        return log

    # Decodes running throughout: the share settles within a dwell, the bursts come and go.
    log = run(lambda i: 8)
    assert len(log) <= 2 and all(t <= 3.5 for t, *_ in log), log
    # Decodes stopping between bursts too: the share goes back to the whole step only after
    # the dwell (a risk is answered at once), so it round-trips at most once per dwell.
    log = run(lambda i: 8 if i % 4 < 2 else 0)
    for (t1, old1, new1, _), (t2, old2, new2, why) in itertools.pairwise(log):
        if (new1 > old1) != (new2 > old2) and not why.endswith("at_risk"):
            assert t2 - t1 >= 3.0, log
    assert len(log) <= 2 * 30 / 3.0 + 1, log


def test_the_cheapest_lever_that_removes_the_risk_is_chosen() -> None:
    # 1) a budget can do it: one budget change, no role, though another worker could switch.
    snap = Snapshot(0.0, (_costed("a", prefill_tokens_waiting=1000), _costed("b", "decode")))
    (a,) = decide(snap, ControllerState(), CFG)[0]
    assert (a.kind, a.target, a.reason) == ("prefill_budget", "a", "tpot_at_risk")
    # 2) no budget can: 6,000 prompt tokens need more prefill than one worker has within the
    # TTFT objective, so the decode worker with TPOT headroom takes prompts on.
    snap = Snapshot(0.0, (_costed("a", prefill_tokens_waiting=6000), _costed("b", "decode")))
    actions = decide(snap, ControllerState(), CFG)[0]
    role = [x for x in actions if x.kind == "role"]
    assert [(x.target, x.new, x.reason) for x in role] == [("b", "mixed", "ttft_at_risk")]
    assert all(x.kind != "prefill_budget" or x.new >= 512 for x in actions), "TTFT first"
    # 3) neither can (the large model's only worker): the routing thresholds move, and they
    # did not when a role could (case 2 with routing on).
    policy = RoutingConfig(small_model="S", large_model="L")
    small = _w("s", "mixed", model="S")
    hot = _costed("l", model="L", prefill_tokens_waiting=6000)
    snap = Snapshot(0.0, (hot, small), policy, policy)
    moved = {x.target: x for x in decide(snap, ControllerState(), CFG)[0] if x.kind == "policy"}
    assert moved["spill_queue_ms"].new == CFG.min_spill_queue_ms
    assert moved["confidence_threshold"].new < policy.confidence_threshold
    assert moved["spill_queue_ms"].reason == "large_overloaded"
    assert "small_spill_queue_ms" not in moved, "spill thresholds are set per direction"
    two = Snapshot(0.0, (hot, _costed("l2", "decode", model="L"), small), policy, policy)
    actions = decide(two, ControllerState(), CFG)[0]
    assert [x.kind for x in actions if not x.target.endswith("strategy")] == ["role"]
    # The small model overloaded: its intents spill up sooner (no quality cost).
    snap = Snapshot(0.0, (_w("l", "mixed", model="L"), replace(hot, model="S")), policy, policy)
    actions = decide(snap, ControllerState(), CFG)[0]
    moved = {x.target for x in actions if x.kind == "policy" and "queue" in x.target}
    assert moved == {"small_spill_queue_ms", "small_return_queue_ms"}


def test_a_decode_worker_without_tpot_headroom_is_not_made_mixed() -> None:
    busy = _w("d", "decode", tpot_ms=95.0, batch=4)
    snap = Snapshot(0.0, (_w("p", "prefill", queue_ms=5000.0), busy))
    assert decide(snap, ControllerState(), CFG)[0] == []
    roomy = replace(busy, tpot_ms=30.0)
    snap = Snapshot(0.0, (_w("p", "prefill", queue_ms=5000.0), roomy))
    assert [a.new for a in decide(snap, ControllerState(), CFG)[0]] == ["mixed"]


def test_without_a_cost_model_the_share_follows_what_the_steps_show() -> None:
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
    assert len(mesh.log) == n + 1, "moving averages lag: one change per budget_dwell_ms"


def test_a_decode_backlog_the_budgets_cannot_clear_moves_a_role() -> None:
    mesh = Mesh({"p": "prefill", "d": "decode"})
    (a,) = mesh.round(0.0, queue_ms=2500.0, tpot_ms=20.0)
    assert (a.kind, a.target, a.new, a.reason) == ("role", "d", "mixed", "ttft_at_risk")
    assert a.inputs["queue_delay_ms"] == 2500.0
    assert mesh.of("role") == [a] and mesh.round(1.0, queue_ms=2500.0, tpot_ms=20.0) == []
    # TPOT at risk with TTFT safe: the budgets first, then the prefill worker turns mixed
    # (more decode capacity), then a mixed one decode-only.
    for t in range(10, 40):
        mesh.round(float(t), queue_ms=100.0, tpot_ms=150.0)
    roles = [(x.target, x.new, x.reason) for x in mesh.of("role")[1:]]
    assert roles[0] == ("p", "mixed", "tpot_at_risk")
    assert mesh.log.index(mesh.of("role")[1]) > mesh.log.index(mesh.of("prefill_budget")[0])


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
    for worker in "ab":  # a budget reverses at most once per dwell
        moves = [(t, int(a.new) - int(a.old)) for t, a in mesh.timed if a.target == worker]
        for (t1, d1), (t2, d2) in itertools.pairwise(moves):
            assert (d1 > 0) == (d2 > 0) or t2 - t1 >= CFG.budget_dwell_ms / 1000.0, moves


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
    pinned = _costed(prefill_tokens_waiting=1000, pinned=True)
    assert decide(Snapshot(0.0, (pinned,)), ControllerState(), CFG)[0] == []


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
            _w("L", "mixed", batch=large_batch, model=BASE.large_model),
            _w("S", "mixed", model=BASE.small_model),
        )
        models = {BASE.large_model: large_ok, BASE.small_model: small_ok}
        traffic = Traffic(
            30.0, {}, {m: ModelTraffic(20, ok) for m, ok in models.items()},
            acceptance=acceptance or {},
        )  # fmt: skip
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
    moves: dict[str, list[tuple[float, float]]] = {}
    for i in range(50):  # attainment flickering around the target every second
        for a in r.round(float(i), large_ok=0.85 + (i % 2) * 0.1):
            moves.setdefault(a.target, []).append((float(i), float(a.new) - float(a.old)))
    assert moves, "it does move"
    for target, m in moves.items():  # it moves on at once, but turns back once per dwell
        turns = [(t1, t2) for (t1, d1), (t2, d2) in itertools.pairwise(m) if (d1 > 0) != (d2 > 0)]
        assert len(turns) <= 50 / (CFG.min_dwell_ms / 1000.0) + 1, (target, m)
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
    low = r.round(20.0, large_ok=1.0, large_batch=2, acceptance={"math": 0.1})
    assert [(a.target, a.new, a.reason) for a in low] == [
        ("routes.math.strategy", "none", "low_acceptance")
    ], "acceptance is per route: the other speculating routes keep drafting"


def test_traffic_window_counts_arrivals_and_slo_attainment_within_the_window() -> None:
    w = TrafficWindow(window_s=10.0)
    for t in range(20):
        w.arrived(float(t), Arrival("code" if t % 2 else "chat", "big", 100))
        w.ended(float(t), "big", met_slo=t % 4 != 0)
    s = w.summary(19.5)
    assert s.arrivals_per_s == {"chat": 0.5, "code": 0.5}  # t = 10..19
    assert s.model_arrivals_per_s == {"big": pytest.approx(1.0)}
    assert s.prompt_tokens_per_s == {"big": pytest.approx(100.0)}
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


# -- the quality budget ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_sustained_pressure_never_downgrades_past_the_quality_budget(seed: int) -> None:
    """The large model's queue always long and every threshold at the controller's floor: no
    request is downgraded that would lift its route's share of downgrades, among the demanding
    requests routed in the window up to it, above the bound."""
    rng = random.Random(seed)
    cfg = replace(CFG, max_downgrade_fraction={"knowledge_qa": 0.1})
    pressed = RoutingConfig(confidence_threshold=cfg.min_confidence_threshold, spill_queue_ms=50,
                            return_queue_ms=10)  # fmt: skip
    router = RoutingRouter(pressed)
    router.base = BASE
    window = TrafficWindow(cfg.traffic_window_s)
    loads = {BASE.large_model: 60_000.0, BASE.small_model: 0.0}
    seen: dict[str, list[bool]] = {}
    t = 0.0
    for _ in range(3000):
        t += rng.expovariate(20.0)
        probe = ProbeResult(rng.choice(INTENTS), rng.random())
        capped = window.capped(
            t, ROUTE_KEYS, cfg.max_downgrade_fraction, cfg.default_max_downgrade_fraction
        )
        d = router.route(probe, loads, capped=capped)
        window.arrived(t, Arrival(d.intent, d.model, 100, d.route_key, d.demanding, d.downgraded))
        if d.demanding:
            seen.setdefault(d.route_key, []).append(d.downgraded)
        if d.downgraded:  # the share it is counted in, as it was routed
            fraction = window.summary(t).downgrade_fraction[d.route_key]
            assert fraction <= cfg.downgrade_bound(d.route_key) + 1e-9, (d.route_key, fraction)
    # Pressure did downgrade, as far as the budget allowed: spilled knowledge questions and
    # unsure prompts served by the small model.
    assert any(seen["knowledge_qa"]) and any(seen["low_confidence"])
    assert not any(seen.get("math", [])), "math never spills: not spillable, never downgraded"


def test_the_controller_lowers_no_threshold_once_the_quality_budget_is_spent() -> None:
    policy = RoutingConfig(small_model="S", large_model="L")
    hot = _costed("l", model="L", prefill_tokens_waiting=6000)
    spent = Traffic(15.0, downgrade_fraction={"knowledge_qa": 0.25, "low_confidence": 0.3})
    snap = Snapshot(0.0, (hot, _w("s", "mixed", model="S")), policy, policy, traffic=spent)
    actions = decide(snap, ControllerState(), CFG)[0]
    assert not [a for a in actions if a.kind == "policy" and "strategy" not in a.target]
    left = replace(spent, downgrade_fraction={"knowledge_qa": 0.1, "low_confidence": 0.3})
    actions = decide(replace(snap, traffic=left), ControllerState(), CFG)[0]
    (spill,) = [a for a in actions if a.target == "spill_queue_ms"]
    assert spill.inputs["quality_budget_spent"] == 0.0


def test_a_lever_switched_off_is_never_moved_and_leaves_its_risk_to_the_others() -> None:
    policy = RoutingConfig(small_model="S", large_model="L")
    hot = _costed("l", model="L", prefill_tokens_waiting=1000, batch=2)  # a budget removes it
    snap = Snapshot(0.0, (hot, _w("s", "mixed", model="S")), policy, policy)
    both = decide(snap, ControllerState(), CFG)[0]
    assert {a.kind for a in both} == {"prefill_budget"}, "the cheapest lever alone"
    routing = decide(snap, ControllerState(), replace(CFG, levers=("routing",)))[0]
    assert {a.kind for a in routing} == {"policy"}
    assert {a.target for a in routing} >= {"spill_queue_ms", "confidence_threshold"}
    budgets = decide(snap, ControllerState(), replace(CFG, levers=("budget", "role")))[0]
    assert budgets == both
    with pytest.raises(InvalidRequestError, match="controller.levers"):
        replace(CFG, levers=("budget", "knob"))


def test_prompts_arriving_count_toward_the_share_that_drains_them_in_time() -> None:
    w = _costed(prefill_tokens_waiting=500)
    lo, hi = budget_band(w, CFG)
    lo_busy, hi_busy = budget_band(w, CFG, arriving_per_s=1000.0)
    assert hi_busy == hi and lo_busy > lo, "650 ms of arrivals more to drain within the target"
    # Enough arrivals and no share drains them in time: the band is empty, TTFT first.
    assert budget_band(w, CFG, arriving_per_s=5000.0)[0] > hi
    flood = Traffic(15.0, prompt_tokens_per_s={"m": 5000.0})
    small_share = replace(w, prefill_budget_tokens=128)
    (a,) = decide(Snapshot(0.0, (small_share,), traffic=flood), ControllerState(), CFG)[0]
    assert (a.new, a.inputs["prompt_tokens_arriving_per_s"]) == (MAX_BUDGET, 5000.0)
