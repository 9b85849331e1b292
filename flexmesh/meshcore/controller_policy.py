"""The controller's policies: pure, `decide(snapshot, state, cfg) -> (actions, state)`, called
by the controller actor's reconcile loop (`actors/controller.py`) on an immutable snapshot.

Two levers from the same telemetry (docs/controller.md argues each rule):

- **Prefill/decode split**, per model, the gentle lever first.
  *Budgets* (dynamic co-location), per `mixed` worker on its own signals: the prefill share of
  each step's token budget halves when its TPOT is at risk and its TTFT is not (decode-first),
  and doubles when its TTFT is at risk and its TPOT is safe (prefill-first), at most once per
  `budget_dwell_ms`.
  *Roles* (dynamic disaggregation), for models with two or more live workers, only in a round
  where no budget of the model asks to move (one waiting out its dwell counts as asking):
  TTFT at risk (the longest expected wait for a first token on a prefill-capable worker,
  `ttft_ms`): a decode worker with TPOT headroom of its own becomes `mixed`; TPOT at risk (the
  slowest step that decodes on a decode-capable worker) while TTFT is safe: a `mixed` worker
  becomes `decode`. At most one role change per model per
  `min_dwell_ms`; one prefill-capable and one decode-capable worker per model always remain.
- **Routing**, when the mesh routes between a small and a large model: while one model is
  under pressure (SLO attainment below `attainment_target`, or a queue past the TTFT risk line)
  and the other is relaxed (attainment met, queue safe), spilling starts sooner
  (`spill_queue_ms` halves) and, when the large model is the one, fewer low-confidence prompts
  go to it (`confidence_threshold` steps down); once no model is under pressure they step back
  to the configured policy (a low spill threshold also spills the small model's intents to the
  large one, so it must not outlive the pressure). A route's PLD or speculation is switched
  off while its model's draft acceptance is below `min_acceptance` or its decode batch reaches
  `spec_max_batch` (drafts then cost more than they save), and back on once the batch is small.

Hysteresis everywhere: "at risk" is at or above `high_fraction` of an SLO, "safe" below
`low_fraction`, and each knob moves only when the opposing signal is not at risk. Pins win:
the controller never touches a worker or a policy field the operator set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flexmesh.meshcore.config import ControllerConfig
from flexmesh.meshcore.messages import WorkerStatus
from flexmesh.meshcore.pool import DECODE_ROLES, PREFILL_ROLES
from flexmesh.meshcore.routing import RouteTable, RoutingConfig, is_pinned
from flexmesh.meshcore.traffic import Traffic

MIN_SLO_SAMPLES = 3
"""Requests a model must have ended in the window before its SLO attainment counts."""


@dataclass(frozen=True)
class Snapshot:
    """What the controller sees at one instant (immutable)."""

    t_s: float
    """Monotonic time of the snapshot, in seconds (the controller's clock)."""
    workers: tuple[WorkerStatus, ...]
    """Every worker's latest report; `alive=False` for one that did not answer in time."""
    policy: RoutingConfig | None = None
    """The live routing policy (None: the mesh does not route between two models)."""
    base_policy: RoutingConfig | None = None
    """The configured policy the routing lever returns to when nothing is under pressure."""
    policy_pins: frozenset[str] = frozenset()
    """Policy fields the operator set ("spill_queue_ms", "routes.code", ...)."""
    traffic: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True)
class Action:
    """One decision: what changes, to what, why, and the signals it was taken on."""

    kind: str
    """"role", "prefill_budget" or "policy"."""
    target: str
    """A worker name, or a policy field ("spill_queue_ms", "routes.code.strategy")."""
    old: str | int | float
    new: str | int | float
    reason: str
    inputs: Mapping[str, float] = field(default_factory=dict)
    model: str = ""


@dataclass(frozen=True)
class ControllerState:
    """The policies' memory between rounds: when each knob last moved (by key)."""

    last_change_s: Mapping[str, float] = field(default_factory=dict)


def decide(
    snap: Snapshot, state: ControllerState, cfg: ControllerConfig
) -> tuple[list[Action], ControllerState]:
    """Every lever's actions for this round (see the module docstring)."""
    last = dict(state.last_change_s)
    actions: list[Action] = []
    for model in sorted({w.model for w in snap.workers}):
        workers = [w for w in snap.workers if w.model == model and w.alive]
        # One lever per model per round, the gentle one first: a role changes only when no
        # mixed worker's budget can move the way its signals ask.
        wished = _budget_actions(workers, cfg)
        dwell_s = cfg.budget_dwell_ms / 1000.0
        budgets = [a for a in wished if snap.t_s - last.get(a.target, -1e18) >= dwell_s]
        role = None if wished else _role_action(snap.t_s, workers, last, cfg)
        for a in (*budgets, *([role] if role else [])):
            actions.append(a)
            last[a.target] = snap.t_s
        if role is not None:
            last[model] = snap.t_s
    if snap.policy is not None and snap.base_policy is not None:
        for a in _routing_actions(snap, last, cfg):
            actions.append(a)
            last[a.target] = snap.t_s
    return actions, ControllerState(last)


# -- prefill/decode split --------------------------------------------------------------------


def ttft_ms(w: WorkerStatus) -> float:
    """Expected wait before a new prompt's first token on `w`: its queue delay, or, when
    prompts are admitted but crawl through small prefill shares, the time to compute every
    prompt token it holds at its current share (`prefill_tokens_waiting` tokens at
    `prefill_budget_tokens` a step of `step_ms`)."""
    share = w.prefill_budget_tokens or w.max_batched_tokens
    drain_ms = w.prefill_tokens_waiting * w.step_ms / share if share > 0 else 0.0
    return max(w.queue_delay_ms, drain_ms)


def signals(workers: list[WorkerStatus]) -> dict[str, float]:
    """TTFT and TPOT signals of one model's live workers, in milliseconds."""
    prefill = [w for w in workers if w.role in PREFILL_ROLES and not w.draining]
    decoding = [w for w in workers if w.role in DECODE_ROLES and w.decode_batch > 0]
    return {
        "queue_delay_ms": max((ttft_ms(w) for w in prefill), default=0.0),
        "tpot_ms": max((w.tpot_ms for w in decoding), default=0.0),
    }


def _ratios(s: Mapping[str, float], cfg: ControllerConfig) -> dict[str, float]:
    return {
        **s,
        "ttft_ratio": s["queue_delay_ms"] / cfg.ttft_slo_ms,
        "tpot_ratio": s["tpot_ms"] / cfg.tpot_slo_ms,
    }


def _role_action(
    now: float, workers: list[WorkerStatus], last: Mapping[str, float], cfg: ControllerConfig
) -> Action | None:
    if len(workers) < 2:
        return None
    model = workers[0].model
    if now - last.get(model, -1e18) < cfg.min_dwell_ms / 1000.0:
        return None
    r = _ratios(signals(workers), cfg)
    if r["ttft_ratio"] >= cfg.high_fraction:
        # Only a decode worker with TPOT headroom of its own can take prompts on.
        def roomy(w: WorkerStatus) -> bool:
            return w.tpot_ms < cfg.high_fraction * cfg.tpot_slo_ms or w.decode_batch == 0

        return _switch(workers, "decode", "mixed", "ttft_at_risk", r, roomy)
    if r["tpot_ratio"] >= cfg.high_fraction and r["ttft_ratio"] < cfg.low_fraction:
        return _switch(workers, "mixed", "decode", "tpot_at_risk", r)
    return None


def _switch(
    workers: list[WorkerStatus],
    old: str,
    new: str,
    reason: str,
    inputs: Mapping[str, float],
    eligible: Callable[[WorkerStatus], bool] = lambda w: True,
) -> Action | None:
    """The least busy unpinned eligible worker in role `old` moved to `new`, if the invariant
    holds."""
    candidates = [
        w for w in workers if w.role == old and not w.pinned and not w.draining and eligible(w)
    ]
    for w in sorted(candidates, key=lambda w: (w.decode_batch, w.prefill_tokens_waiting)):
        after = [new if x is w else x.role for x in workers if not x.draining]
        if any(r in PREFILL_ROLES for r in after) and any(r in DECODE_ROLES for r in after):
            return Action("role", w.name, old, new, reason, inputs, w.model)
    return None


def _budget_actions(workers: list[WorkerStatus], cfg: ControllerConfig) -> list[Action]:
    """Each unpinned mixed worker's prefill share: halve for TPOT, double for TTFT (the caller
    holds back a worker changed less than `budget_dwell_ms` ago)."""
    actions = []
    for w in workers:
        if w.role != "mixed" or w.pinned or w.draining or w.max_batched_tokens <= 0:
            continue
        tpot_ms = w.tpot_ms if w.decode_batch > 0 else 0.0
        r = _ratios({"queue_delay_ms": ttft_ms(w), "tpot_ms": tpot_ms}, cfg)
        old = w.prefill_budget_tokens
        new, reason = old, ""
        if r["tpot_ratio"] >= cfg.high_fraction and r["ttft_ratio"] < cfg.high_fraction:
            new, reason = max(cfg.min_prefill_budget_tokens, old // 2), "tpot_at_risk"
        elif r["ttft_ratio"] >= cfg.high_fraction and r["tpot_ratio"] < cfg.low_fraction:
            new, reason = min(w.max_batched_tokens, old * 2), "ttft_at_risk"
        if new != old:
            actions.append(Action("prefill_budget", w.name, old, new, reason, r, w.model))
    return actions


# -- routing ---------------------------------------------------------------------------------


def model_signals(snap: Snapshot, model: str, cfg: ControllerConfig) -> dict[str, float]:
    """One model's routing signals: queue delay, SLO attainment, decode batch, acceptance."""
    live = [w for w in snap.workers if w.model == model and w.alive]
    prefill = [w for w in live if w.role in PREFILL_ROLES and not w.draining]
    traffic = snap.traffic.models.get(model)
    counted = traffic is not None and traffic.requests >= MIN_SLO_SAMPLES
    out = {
        "queue_delay_ms": min((ttft_ms(w) for w in prefill), default=0.0),
        "slo_attainment": traffic.slo_attainment if counted and traffic else 1.0,
        "decode_batch": float(sum(w.decode_batch for w in live)),
    }
    for strategy in ("pld", "spec"):
        seen = [w.draft_acceptance[strategy] for w in live if strategy in w.draft_acceptance]
        if seen:
            out[f"acceptance_{strategy}"] = sum(seen) / len(seen)
    queue_ratio = out["queue_delay_ms"] / cfg.ttft_slo_ms
    out["pressured"] = float(
        out["slo_attainment"] < cfg.attainment_target or queue_ratio >= cfg.high_fraction
    )
    out["relaxed"] = float(
        out["slo_attainment"] >= cfg.attainment_target and queue_ratio < cfg.low_fraction
    )
    return out


def _routing_actions(
    snap: Snapshot, last: Mapping[str, float], cfg: ControllerConfig
) -> list[Action]:
    policy, base = snap.policy, snap.base_policy
    assert policy is not None and base is not None
    small = model_signals(snap, policy.small_model, cfg)
    large = model_signals(snap, policy.large_model, cfg)
    inputs = {f"{k}_{m}": v for m, s in (("small", small), ("large", large)) for k, v in s.items()}

    def free(key: str) -> bool:
        dwell_s = cfg.min_dwell_ms / 1000.0
        return not is_pinned(key, snap.policy_pins) and snap.t_s - last.get(key, -1e18) >= dwell_s

    actions: list[Action] = []
    one_pressured = (large["pressured"] and small["relaxed"]) or (
        small["pressured"] and large["relaxed"]
    )
    none_pressured = not (large["pressured"] or small["pressured"])
    spill = policy.spill_queue_ms
    if free("spill_queue_ms") and free("return_queue_ms"):
        new_spill = spill
        if one_pressured:
            new_spill = max(cfg.min_spill_queue_ms, spill / 2)
        elif none_pressured:
            new_spill = min(base.spill_queue_ms, spill * 2)
        if new_spill != spill:
            why = "one_model_overloaded" if one_pressured else "back_to_config"
            actions.append(Action("policy", "spill_queue_ms", spill, new_spill, why, inputs))
            ret = round(new_spill * base.return_queue_ms / base.spill_queue_ms, 3)
            actions.append(Action("policy", "return_queue_ms", policy.return_queue_ms, ret, why))
    thr = policy.confidence_threshold
    if free("confidence_threshold"):
        new_thr, why = thr, "back_to_config"
        if large["pressured"] and small["relaxed"]:
            new_thr = max(cfg.min_confidence_threshold, thr - cfg.confidence_step)
            why = "large_overloaded"
        elif not large["pressured"]:
            new_thr = min(base.confidence_threshold, thr + cfg.confidence_step)
        new_thr = round(new_thr, 4)
        if new_thr != round(thr, 4):
            actions.append(Action("policy", "confidence_threshold", thr, new_thr, why, inputs))
    for intent in (f.name for f in dataclasses.fields(RouteTable)):
        key = f"routes.{intent}.strategy"
        route, base_route = policy.routes.get(intent), base.routes.get(intent)
        if base_route.strategy == "none" or route.model != base_route.model or not free(key):
            continue
        s = large if route.model == "large" else small
        acceptance = s.get(f"acceptance_{route.strategy}")
        if route.strategy != "none":
            if acceptance is not None and acceptance < cfg.min_acceptance:
                actions.append(Action("policy", key, route.strategy, "none", "low_acceptance", s))
            elif s["decode_batch"] >= cfg.spec_max_batch:
                actions.append(Action("policy", key, route.strategy, "none", "large_batch", s))
        elif s["decode_batch"] < cfg.spec_max_batch / 2:
            actions.append(Action("policy", key, "none", base_route.strategy, "small_batch", s))
    return actions


def policy_changes(actions: list[Action]) -> dict[str, object]:
    """The nested change set (`routing.apply_update`'s form) of the policy actions."""
    changes: dict[str, object] = {}
    for a in actions:
        if a.kind != "policy":
            continue
        node = changes
        *parents, leaf = a.target.split(".")
        for p in parents:
            node = node.setdefault(p, {})  # type: ignore[assignment]
        node[leaf] = a.new
    return changes
